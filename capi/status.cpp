// Versions and status codes: every string comes from the one table in the
// public header, so a new code cannot be added in one place and forgotten in
// another.
#include "singleflight.h"

extern "C" {

SF_API int sf_version_number(void) { return SF_VERSION_NUMBER; }

SF_API const char *sf_version_string(void) { return SF_VERSION_STRING; }

SF_API const char *sf_strerror(int code) {
    switch (code) {
#define SF_STRERROR_CASE_(name, value, text) \
    case value:                              \
        return text;
        SF_STATUS_MAP(SF_STRERROR_CASE_)
#undef SF_STRERROR_CASE_
        default:
            return "unknown status";
    }
}

SF_API const char *sf_err_name(int code) {
    switch (code) {
#define SF_ERR_NAME_CASE_(name, value, text) \
    case value:                              \
        return #name;
        SF_STATUS_MAP(SF_ERR_NAME_CASE_)
#undef SF_ERR_NAME_CASE_
        default:
            return "SF_UNKNOWN";
    }
}

}  // extern "C"
