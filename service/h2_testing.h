// HTTP/2 frames for tests of what reads them (h2_guard_test,
// stream_relay_test).
#ifndef HALLOC_SERVICE_H2_TESTING_H_
#define HALLOC_SERVICE_H2_TESTING_H_

#include <cstdint>
#include <string>

namespace halloc::testing {

inline constexpr char kH2Preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
inline constexpr uint8_t kH2Data = 0, kH2Headers = 1, kH2RstStream = 3, kH2Settings = 4,
                         kH2Continuation = 9;
inline constexpr uint8_t kH2EndHeaders = 4;

// One frame: its 9-byte header and `length` payload bytes ('x').
inline std::string H2Frame(uint8_t type, uint8_t flags, uint32_t stream, uint32_t length) {
  std::string f;
  for (int shift : {16, 8, 0}) f.push_back(static_cast<char>(length >> shift));
  f.push_back(static_cast<char>(type));
  f.push_back(static_cast<char>(flags));
  for (int shift : {24, 16, 8, 0}) f.push_back(static_cast<char>(stream >> shift));
  f.append(length, 'x');
  return f;
}

}  // namespace halloc::testing

#endif  // HALLOC_SERVICE_H2_TESTING_H_
