// main() for tests with children (test_child.h): a child started by
// TestChild::Spawn runs its registered main; otherwise the tests run.
#include "clients/cpp/halloc/base/test_child.h"
#include "gtest/gtest.h"

int main(int argc, char** argv) {
  if (std::optional<int> status = halloc::testing::RunChildIfAsked(argc, argv)) return *status;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
