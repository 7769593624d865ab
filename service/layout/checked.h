// Sticky-overflow unsigned 64-bit arithmetic for layout computations: once
// any step overflows, every later result is "overflowed" too, so a whole
// computation is checked once at the end. Internal to //service/layout.
#ifndef HALLOC_SERVICE_LAYOUT_CHECKED_H_
#define HALLOC_SERVICE_LAYOUT_CHECKED_H_

#include <cstdint>
#include <numeric>

namespace halloc::layout::internal {

class U64 {
 public:
  constexpr U64(uint64_t v = 0) : v_(v) {}  // NOLINT: implicit on purpose
  static constexpr U64 Overflowed() {
    U64 u;
    u.over_ = true;
    return u;
  }

  constexpr bool overflowed() const { return over_; }
  // Meaningless when overflowed().
  constexpr uint64_t value() const { return v_; }

  friend U64 operator+(U64 a, U64 b) {
    uint64_t r = 0;
    if (a.over_ || b.over_ || __builtin_add_overflow(a.v_, b.v_, &r)) {
      return Overflowed();
    }
    return r;
  }
  friend U64 operator*(U64 a, U64 b) {
    uint64_t r = 0;
    if (a.over_ || b.over_ || __builtin_mul_overflow(a.v_, b.v_, &r)) {
      return Overflowed();
    }
    return r;
  }
  // Division and rounding: the divisor must be non-zero (callers pass
  // alignments and subsampling factors, which are >= 1).
  friend U64 operator/(U64 a, U64 d) {
    if (a.over_ || d.over_ || d.v_ == 0) return Overflowed();
    return a.v_ / d.v_;
  }
  U64 DivRoundUp(U64 d) const {
    if (over_ || d.over_ || d.v_ == 0) return Overflowed();
    return v_ / d.v_ + (v_ % d.v_ != 0 ? 1 : 0);
  }
  // Smallest multiple of `a` that is >= *this.
  U64 AlignUp(U64 a) const { return DivRoundUp(a) * a; }

 private:
  uint64_t v_ = 0;
  bool over_ = false;
};

inline U64 Gcd(U64 a, U64 b) {
  if (a.overflowed() || b.overflowed()) return U64::Overflowed();
  return std::gcd(a.value(), b.value());
}

// Least common multiple of two values >= 1.
inline U64 Lcm(U64 a, U64 b) { return a / Gcd(a, b) * b; }

}  // namespace halloc::layout::internal

#endif  // HALLOC_SERVICE_LAYOUT_CHECKED_H_
