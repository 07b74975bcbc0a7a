// Key hashing.  Keys are short byte strings (cache keys, URLs, ids), so the
// hash reads 16 bytes per round and folds with a 64x64->128 multiply, which
// mixes well and costs a few cycles.  The per-group seed keeps bucket
// placement unpredictable across groups and processes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sf {
namespace detail {

inline uint64_t fold_mul(uint64_t a, uint64_t b) noexcept {
    __uint128_t r = static_cast<__uint128_t>(a) * b;
    return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

inline uint64_t load64(const unsigned char *p) noexcept {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

// Reads 1..8 bytes without touching memory past p + n.
inline uint64_t load_tail(const unsigned char *p, std::size_t n) noexcept {
    if (n >= 4) {
        uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + n - 4, 4);
        return (static_cast<uint64_t>(hi) << 32) | lo;
    }
    return (static_cast<uint64_t>(p[0]) << 16) | (static_cast<uint64_t>(p[n >> 1]) << 8) | p[n - 1];
}

inline __attribute__((always_inline)) uint64_t hash_bytes(const void *data, std::size_t n,
                                                          uint64_t seed) noexcept {
    const uint64_t k0 = 0x9e3779b97f4a7c15ull, k1 = 0xc2b2ae3d27d4eb4full,
                   k2 = 0x165667b19e3779f9ull;
    const unsigned char *p = static_cast<const unsigned char *>(data);
    uint64_t h = seed ^ (static_cast<uint64_t>(n) * k0);
    if (__builtin_expect(n >= 8 && n <= 16, 1)) {
        // The common cache key: two (overlapping) words, one multiply.
        return fold_mul(h ^ load64(p) ^ k2, load64(p + n - 8) ^ k1 ^ static_cast<uint64_t>(n));
    }
    std::size_t left = n;
    while (left > 16) {
        h = fold_mul(load64(p) ^ k1 ^ h, load64(p + 8) ^ k2);
        p += 16;
        left -= 16;
    }
    uint64_t a = 0, b = 0;
    if (left > 8) {
        a = load64(p);
        b = load_tail(p + 8, left - 8);
    } else if (left > 0) {
        a = load_tail(p, left);
    }
    return fold_mul(h ^ a ^ k2, b ^ k1 ^ static_cast<uint64_t>(n));
}

}  // namespace detail
}  // namespace sf
