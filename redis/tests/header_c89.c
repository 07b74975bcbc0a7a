/* singleflight_redis.h is C89 clean and guarded: ctest redis.header compiles
 * this with -std=c89 -pedantic -Werror (and as C++98). */
#include "singleflight_redis.h"
#include "singleflight_redis.h"

int main(void) {
    sf_redis_options o;
    return sf_redis_options_init(&o, SF_REDIS_OPTIONS_VERSION) == SF_OK ? 0 : 1;
}
