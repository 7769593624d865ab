#include "service/sessions.h"

#include <memory>

#include "gtest/gtest.h"

namespace halloc {
namespace {

class NullChannel : public FdChannel {
 public:
  absl::Status Send(const v1::BufferFds&, absl::Span<const int>,
                    const v1::AllocateResponse*) override {
    return absl::OkStatus();
  }
};

Identity Uid(uid_t uid) {
  Identity id;
  id.uid = uid;
  id.pid = 1000 + uid;
  return id;
}

TEST(SessionTableTest, EachSessionHasItsOwnIdAndUnguessableToken) {
  SessionTable table;
  auto channel = std::make_shared<NullChannel>();
  std::shared_ptr<Session> a = table.Open(Uid(1), channel);
  std::shared_ptr<Session> b = table.Open(Uid(2), channel);
  EXPECT_NE(a->id(), b->id());
  EXPECT_NE(a->token(), b->token());
  EXPECT_EQ(a->token().size(), 32u);  // 128 bits, hex
  EXPECT_EQ(table.size(), 2u);

  absl::StatusOr<std::shared_ptr<Session>> found = table.Authenticate(b->token());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->get(), b.get());
  EXPECT_EQ((*found)->creds().uid, 2u);
  EXPECT_EQ(table.Find(a->id()), a);
}

TEST(SessionTableTest, EmptyWrongAndNearMissTokensAreUnauthenticated) {
  SessionTable table;
  std::shared_ptr<Session> s = table.Open(Uid(1), std::make_shared<NullChannel>());
  EXPECT_EQ(table.Authenticate("").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(table.Authenticate("0123").status().code(),
            absl::StatusCode::kUnauthenticated);
  std::string near = s->token();
  near.back() = near.back() == '0' ? '1' : '0';
  EXPECT_EQ(table.Authenticate(near).status().code(),
            absl::StatusCode::kUnauthenticated);
  // A prefix is not the token either.
  EXPECT_EQ(table.Authenticate(s->token().substr(0, 31)).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(SessionTableTest, ClosedSessionsTokenStopsWorkingAndIdIsNotReused) {
  SessionTable table;
  auto channel = std::make_shared<NullChannel>();
  std::shared_ptr<Session> a = table.Open(Uid(1), channel);
  const std::string token = a->token();
  EXPECT_EQ(table.Close(a->id()), a);
  EXPECT_EQ(table.Close(a->id()), nullptr);  // twice: nothing left
  EXPECT_EQ(table.Authenticate(token).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(table.Find(a->id()), nullptr);
  EXPECT_EQ(table.size(), 0u);
  std::shared_ptr<Session> b = table.Open(Uid(1), channel);
  EXPECT_GT(b->id(), a->id());
  // The caller's reference to the closed session stays usable.
  EXPECT_EQ(a->creds().uid, 1u);
}

}  // namespace
}  // namespace halloc
