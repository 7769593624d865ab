// The camera library through a real in-process hallocd (memfd backend on
// the host): the synthetic source's frames, their layout, pattern and
// counter, a read-only share to a second client, and the refusals.
#include "clients/camera/camera.h"

#include <drm_fourcc.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "clients/camera/formats.h"
#include "clients/camera/pattern.h"
#include "clients/cpp/halloc/fake_broker.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace halloc::camera {
namespace {

using ::halloc::testing::HallocTest;

class CameraTest : public HallocTest {
 protected:
  CameraOptions Synthetic(uint32_t format = DRM_FORMAT_XRGB8888) {
    CameraOptions o;
    o.format = format;
    o.width = 320;
    o.height = 240;
    o.buffer_count = 3;
    o.fps = 0;
    o.usage = 0x3;  // cpu_read_often, for the checks
    return o;
  }
};

class SyntheticFormatTest : public CameraTest,
                            public ::testing::WithParamInterface<uint32_t> {};

TEST_P(SyntheticFormatTest, FramesHaveTheLayoutAMovingPatternAndACounter) {
  absl::StatusOr<std::unique_ptr<Camera>> cam =
      Camera::OpenSynthetic(client(), Synthetic(GetParam()));
  ASSERT_TRUE(cam.ok()) << cam.status();
  EXPECT_EQ((*cam)->Describe(), "synthetic");
  ASSERT_EQ((*cam)->buffers().size(), 3u);
  for (const Buffer& b : (*cam)->buffers()) {
    const v1::BufferLayout& l = b.layout();
    EXPECT_EQ(l.format(), GetParam());
    EXPECT_EQ(l.width(), 320u);
    EXPECT_EQ(l.height(), 240u);
    EXPECT_EQ(l.modifier(), DRM_FORMAT_MOD_LINEAR);
    EXPECT_EQ(l.planes_size(), GetParam() == DRM_FORMAT_NV12 ? 2 : 1);
    EXPECT_NE(b.info().usage() & (1u << 17), 0u) << "camera_output";
  }
  EXPECT_EQ((*cam)->format().drm_format, GetParam());
  EXPECT_EQ((*cam)->format().bytesperline,
            (*cam)->buffers()[0].layout().planes(0).stride());
  ASSERT_TRUE((*cam)->Start().ok());
  Rgb previous = {};
  for (uint32_t n = 0; n < 6; ++n) {
    SCOPED_TRACE(n);
    absl::StatusOr<Frame> f = (*cam)->Next();
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->sequence, n);
    EXPECT_EQ(f->index, n % 3);
    EXPECT_EQ(f->buffer, &(*cam)->buffers()[f->index]);
    EXPECT_EQ(f->bytesused, (*cam)->format().sizeimage);
    absl::StatusOr<Mapping> m = f->buffer->Map(Access::kRead);
    ASSERT_TRUE(m.ok()) << m.status();
    const uint8_t* px = m->as<uint8_t>();
    absl::StatusOr<uint32_t> counter = ReadCounter(f->buffer->layout(), px, m->size());
    ASSERT_TRUE(counter.ok()) << counter.status();
    EXPECT_EQ(*counter, n) << "the counter increments";
    // Column 38 is 2 px left of bar 1's start: white at frame 0, yellow
    // once the bars have moved by 4 px.
    absl::StatusOr<Rgb> c = PixelAt(f->buffer->layout(), px, m->size(), 38, 120);
    ASSERT_TRUE(c.ok()) << c.status();
    const Rgb want = BarColour(BarAt(38, 320, n));
    EXPECT_NEAR(c->r, want.r, 6);
    EXPECT_NEAR(c->g, want.g, 6);
    EXPECT_NEAR(c->b, want.b, 6);
    if (n == 1) {
      EXPECT_TRUE(previous.b > 200 && c->b < 60) << "the pattern moved";
    }
    previous = *c;
    ASSERT_TRUE((*cam)->Requeue(f->index).ok());
  }
  EXPECT_TRUE((*cam)->Stop().ok());
}

INSTANTIATE_TEST_SUITE_P(Formats, SyntheticFormatTest,
                         ::testing::Values(DRM_FORMAT_XRGB8888, DRM_FORMAT_YUYV,
                                           DRM_FORMAT_NV12));

TEST_F(CameraTest, HeldFramesAreNotReusedUntilRequeued) {
  absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::Open(client(), Synthetic());
  ASSERT_TRUE(cam.ok()) << cam.status();
  EXPECT_EQ((*cam)->Next().status().code(), absl::StatusCode::kFailedPrecondition)
      << "not started";
  ASSERT_TRUE((*cam)->Start().ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*cam)->Next().ok());
  absl::StatusOr<Frame> none = (*cam)->Next();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("Requeue"), std::string::npos);
  ASSERT_TRUE((*cam)->Requeue(1).ok());
  EXPECT_EQ((*cam)->Requeue(1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*cam)->Requeue(7).code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<Frame> again = (*cam)->Next();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->index, 1u);
  EXPECT_EQ(again->sequence, 3u);
}

// A consumer thread gives frames back while the capture thread waits for
// the next free buffer.
TEST_F(CameraTest, FramesRequeuedFromAnotherThread) {
  absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::Open(client(), Synthetic());
  ASSERT_TRUE(cam.ok()) << cam.status();
  ASSERT_TRUE((*cam)->Start().ok());
  struct Shown {
    absl::Mutex mu;
    std::deque<uint32_t> frames ABSL_GUARDED_BY(mu);
    bool done ABSL_GUARDED_BY(mu) = false;
    static bool Ready(Shown* s) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return !s->frames.empty() || s->done;
    }
  } shown;
  std::thread consumer([&] {
    absl::MutexLock lock(&shown.mu);
    while (true) {
      shown.mu.Await(absl::Condition(&Shown::Ready, &shown));
      if (shown.frames.empty()) return;
      EXPECT_TRUE((*cam)->Requeue(shown.frames.front()).ok());
      shown.frames.pop_front();
    }
  });
  for (uint32_t n = 0; n < 50; ++n) {
    absl::StatusOr<Frame> f;
    do {
      f = (*cam)->Next();
    } while (f.status().code() == absl::StatusCode::kFailedPrecondition);
    if (!f.ok()) {  // not ASSERT: the consumer thread must be joined
      ADD_FAILURE() << f.status();
      break;
    }
    EXPECT_EQ(f->sequence, n);
    absl::MutexLock lock(&shown.mu);
    shown.frames.push_back(f->index);
  }
  {
    absl::MutexLock lock(&shown.mu);
    shown.done = true;
  }
  consumer.join();
}

TEST_F(CameraTest, PacedAtFps) {
  CameraOptions o = Synthetic();
  o.fps = 100;
  absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::Open(client(), o);
  ASSERT_TRUE(cam.ok()) << cam.status();
  // Before Start: the 11th frame is due 100 ms after Start, so however slow
  // the machine, at least that much has passed when it arrives (a lower
  // bound only; no upper bound is judged).
  const absl::Time start = absl::Now();
  ASSERT_TRUE((*cam)->Start().ok());
  absl::Duration first, last;
  for (int i = 0; i < 11; ++i) {
    absl::StatusOr<Frame> f = (*cam)->Next();
    timespec now = {};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    ASSERT_TRUE(f.ok()) << f.status();
    // Handed out no earlier than it was due, on the clock it is stamped by.
    EXPECT_LE(f->timestamp, absl::DurationFromTimespec(now)) << "frame " << i;
    (i == 0 ? first : last) = f->timestamp;
    ASSERT_TRUE((*cam)->Requeue(f->index).ok());
  }
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_LT(absl::AbsDuration(last - first - absl::Milliseconds(100)), absl::Microseconds(1))
      << "the schedule's slots, a period apart: " << (last - first);
}

// A consumer polling with a timeout shorter than the frame period (an
// event loop at 60 Hz on a 20 fps camera) gets every frame in order once
// it is due: a poll that times out takes nothing.
TEST_F(CameraTest, PollingShorterThanThePeriodMissesNoFrame) {
  CameraOptions o = Synthetic();
  o.fps = 20;
  absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::Open(client(), o);
  ASSERT_TRUE(cam.ok()) << cam.status();
  ASSERT_TRUE((*cam)->Start().ok());
  int timeouts = 0;
  for (uint32_t want = 0; want < 4;) {
    const absl::Time asked = absl::Now();
    absl::StatusOr<Frame> f = (*cam)->Next(absl::Milliseconds(5));
    if (absl::IsDeadlineExceeded(f.status())) {
      ++timeouts;
      EXPECT_GE(absl::Now() - asked, absl::Milliseconds(5)) << "a poll waits its timeout";
      ASSERT_LT(timeouts, 400) << "no frame for 2 s of polling at 20 fps";
      continue;
    }
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->sequence, want) << "a timed-out poll used a frame up";
    ASSERT_TRUE((*cam)->Requeue(f->index).ok());
    ++want;
  }
  EXPECT_GT(timeouts, 0) << "polls shorter than the period should have timed out";
}

TEST_F(CameraTest, SharedReadOnlyToASecondClientWithTheSameContent) {
  absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::Open(client(), Synthetic());
  ASSERT_TRUE(cam.ok()) << cam.status();
  absl::StatusOr<Client> display = daemon().Connect();
  ASSERT_TRUE(display.ok()) << display.status();
  ASSERT_TRUE((*cam)->Start().ok());
  for (uint32_t n = 0; n < 4; ++n) {
    SCOPED_TRACE(n);
    absl::StatusOr<Frame> f = (*cam)->Next();
    ASSERT_TRUE(f.ok()) << f.status();
    absl::StatusOr<v1::Grant> grant =
        (*cam)->ShareWithUid(*f, getuid(), v1::CPU_ACCESS_READ);
    ASSERT_TRUE(grant.ok()) << grant.status();
    EXPECT_EQ(grant->cpu_access(), v1::CPU_ACCESS_READ);
    absl::StatusOr<Buffer> got = display->Import(grant->token());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->id(), f->buffer->id());
    EXPECT_EQ(got->info().cpu_access(), v1::CPU_ACCESS_READ);
    EXPECT_EQ(got->layout().SerializeAsString(),
              f->buffer->layout().SerializeAsString());
    EXPECT_EQ(got->Map(Access::kReadWrite).status().code(),
              absl::StatusCode::kPermissionDenied);
    absl::StatusOr<Mapping> theirs = got->Map(Access::kRead);
    ASSERT_TRUE(theirs.ok()) << theirs.status();
    absl::StatusOr<Mapping> ours = f->buffer->Map(Access::kRead);
    ASSERT_TRUE(ours.ok()) << ours.status();
    ASSERT_EQ(memcmp(theirs->data(), ours->data(), f->buffer->layout().size()), 0);
    absl::StatusOr<uint32_t> counter =
        ReadCounter(got->layout(), theirs->as<uint8_t>(), theirs->size());
    ASSERT_TRUE(counter.ok()) << counter.status();
    EXPECT_EQ(*counter, n);
    ASSERT_TRUE(display->Release(got->id()).ok());
    ASSERT_TRUE((*cam)->Requeue(f->index).ok());
  }
  Frame bogus;
  bogus.index = 9;
  EXPECT_EQ((*cam)->ShareWithUid(bogus, getuid(), v1::CPU_ACCESS_READ).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The policy names the consumer: the grant goes to the client called
// "camera" (here the same uid, so the same client), and to no one else.
TEST(CameraPolicyTest, ShareWithClientByPolicyName) {
  char path[] = "/tmp/halloc-camera-policy-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0) << strerror(errno);
  const std::string policy = absl::StrCat(R"(
    clients {
      name: "camera"
      match { uids: )", getuid(), R"( }
      usages: "camera_output" usages: "cpu_read_often" usages: "cpu_write_often"
      heaps: "*"
      max_cpu_access: CPU_ACCESS_READ_WRITE
      share_to: "camera" receive_from: "camera"
    })");
  ASSERT_EQ(write(fd, policy.data(), policy.size()),
            static_cast<ssize_t>(policy.size()));
  close(fd);
  DaemonOptions options = testing::TestDaemon::DefaultOptions();
  options.policy_file = path;
  auto daemon = testing::TestDaemon::Start(options);
  unlink(path);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<Client> producer = (*daemon)->Connect();
  ASSERT_TRUE(producer.ok()) << producer.status();
  absl::StatusOr<Client> consumer = (*daemon)->Connect();
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  CameraOptions o;
  o.width = 320;
  o.height = 240;
  o.fps = 0;
  o.usage = 0x3;
  absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::Open(*producer, o);
  ASSERT_TRUE(cam.ok()) << cam.status();
  ASSERT_TRUE((*cam)->Start().ok());
  absl::StatusOr<Frame> f = (*cam)->Next();
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<v1::Grant> grant =
      (*cam)->ShareWithClient(*f, "camera", v1::CPU_ACCESS_READ);
  ASSERT_TRUE(grant.ok()) << grant.status();
  absl::StatusOr<Buffer> got = consumer->Import(grant->token());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->info().cpu_access(), v1::CPU_ACCESS_READ);
  absl::StatusOr<v1::Grant> refused =
      (*cam)->ShareWithClient(*f, "compositor", v1::CPU_ACCESS_READ);
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("compositor"), std::string::npos)
      << refused.status();
}

TEST_F(CameraTest, BadInputsGiveClearErrors) {
  CameraOptions o = Synthetic();
  o.format = DRM_FORMAT_NV21;
  absl::Status s = Camera::Open(client(), o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("NV21"), std::string::npos) << s;
  o.device = "/dev/null";
  s = Camera::Open(client(), o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("no V4L2 capture format"), std::string::npos) << s;

  o = Synthetic();
  o.width = 0;
  s = Camera::Open(client(), o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("non-zero"), std::string::npos) << s;
  o.device = "/dev/video0";
  EXPECT_EQ(Camera::Open(client(), o).status().code(),
            absl::StatusCode::kInvalidArgument);

  o = Synthetic();
  o.buffer_count = 0;
  EXPECT_EQ(Camera::Open(client(), o).status().code(),
            absl::StatusCode::kInvalidArgument);

  // A rate V4L2's frame interval (in ms) cannot hold, or no number at all.
  for (double fps : {-1.0, kMinFps / 2, kMaxFps + 1, 1e12, std::nan("")}) {
    o = Synthetic();
    o.fps = fps;
    s = Camera::Open(client(), o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << fps << ": " << s;
    EXPECT_NE(s.message().find("frames/s"), std::string::npos) << s;
  }

  o = Synthetic();
  o.device = "/dev/null";
  s = Camera::Open(client(), o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("/dev/null is not a V4L2 device"), std::string::npos) << s;

  o.device = "/nonexistent/video9";
  s = Camera::Open(client(), o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("/nonexistent/video9"), std::string::npos) << s;
}

// What hallocd lays a frame out as is checked before anything writes by
// it: a reply from a buggy or foreign daemon is DATA_LOSS, not a write past
// a mapping (or, with no plane, an abort on planes(0)).
TEST_F(CameraTest, AFrameLayoutIsCheckedBeforeAnythingWritesByIt) {
  const v1::BufferDescriptor desc = FrameDescriptor(Synthetic(), 320, 240);
  absl::StatusOr<v1::IsSupportedResponse> r = client().IsSupported(desc);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(SupportStatus(*r).ok()) << SupportStatus(*r);
  const v1::BufferLayout good = r->layout();
  EXPECT_TRUE(CheckFrameLayout(good, desc, good.size()).ok());

  auto refused = [&](const v1::BufferLayout& l, uint64_t size, const std::string& why) {
    const absl::Status s = CheckFrameLayout(l, desc, size);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << why << ": " << s;
    EXPECT_NE(s.message().find(why), std::string::npos) << s;
  };
  v1::BufferLayout l = good;
  l.clear_planes();
  refused(l, good.size(), "has no plane");
  l = good;
  l.set_width(640);
  refused(l, UINT64_MAX, "is for a 640x240");
  refused(good, good.size() - 1, "the buffer has");
  l = good;
  l.mutable_planes(0)->set_offset(good.size());
  refused(l, UINT64_MAX, "outside its");
  l = good;
  l.mutable_planes(0)->set_size(UINT64_MAX);  // offset + size would wrap
  l.mutable_planes(0)->set_offset(1);
  refused(l, UINT64_MAX, "outside its");
  l = good;
  l.mutable_planes(0)->set_stride(0);
  refused(l, UINT64_MAX, "outside its");
}

// A refusal is never read as success, whatever code the reply carries.
TEST(SupportStatusTest, ARefusalIsAnErrorEvenWithoutACode) {
  v1::IsSupportedResponse r;
  r.set_supported(true);
  EXPECT_TRUE(SupportStatus(r).ok());
  r.set_supported(false);
  r.set_reason("no such heap");
  EXPECT_EQ(SupportStatus(r).code(), absl::StatusCode::kUnknown);  // code 0 (OK)
  r.set_code(99);
  EXPECT_EQ(SupportStatus(r).code(), absl::StatusCode::kUnknown);
  r.set_code(static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(SupportStatus(r).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(SupportStatus(r).message().find("no such heap"), std::string::npos);
}

// A daemon whose buffers come without the layout asked for (none at all,
// or unlike each other): the camera refuses them (and gives them back)
// rather than draw by a layout it never checked.
TEST(CameraDaemonTest, BuffersLaidOutUnlikeWhatWasAskedAreRefused) {
  for (const bool one_unlike : {false, true}) {
    ::halloc::testing::FakeBroker broker([&](int sock, const v1::BrokerRequest& req) {
      if (req.has_release()) {
        ::halloc::testing::FakeBroker::Reply(sock,
                                             ::halloc::testing::ReleaseReply(req.request_id()));
      }
      if (!req.has_allocate()) return;
      const v1::ImageDescriptor& want = req.allocate().desc().image();
      v1::BrokerReply reply = ::halloc::testing::AllocateReply(req.request_id(), {1, 2});
      std::vector<::halloc::UniqueFd> fds;
      std::vector<int> raw;
      for (v1::BufferInfo& b : *reply.mutable_allocate()->mutable_buffers()) {
        fds.push_back(::halloc::testing::Memfd());
        raw.push_back(fds.back().get());
        if (!one_unlike) continue;  // no layout at all
        v1::BufferLayout* l = b.mutable_layout();
        l->set_format(want.format());
        l->set_width(want.width());
        l->set_height(want.height());
        l->set_size(4096);
        v1::PlaneLayout* p = l->add_planes();
        p->set_stride(b.id() == 1 ? 64 : 128);  // the second unlike the first
        p->set_size(4096);
      }
      ::halloc::testing::FakeBroker::Reply(sock, reply, raw);
    });
    absl::StatusOr<Client> c = Client::Connect(broker.options());
    ASSERT_TRUE(c.ok()) << c.status();
    CameraOptions o;
    o.width = 16;
    o.height = 16;
    o.buffer_count = 2;
    o.fps = 0;
    const absl::Status s = Camera::OpenSynthetic(*c, o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find(one_unlike ? "unlike buffer 0" : "has no plane"), std::string::npos)
        << s;
    for (int i = 0; i < 500 && broker.released_ids().size() < 2; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_EQ(broker.released_ids().size(), 2u) << "the refused buffers were kept";
  }
}

TEST(Formats, V4l2AndDrmNamesOfOneLayout) {
  // V4L2 XBGR32 ('XR24', B G R X in memory) is DRM XRGB8888 ('XR24').
  EXPECT_EQ(*V4l2FromDrm(DRM_FORMAT_XRGB8888), 0x34325258u);
  EXPECT_EQ(*V4l2FromDrm(DRM_FORMAT_YUYV), DRM_FORMAT_YUYV);
  EXPECT_EQ(*V4l2FromDrm(DRM_FORMAT_NV12), DRM_FORMAT_NV12);
  EXPECT_EQ(FourccString(*V4l2FromDrm(DRM_FORMAT_RGB565)), "RGBP");
  EXPECT_EQ(*DrmFromV4l2(*V4l2FromDrm(DRM_FORMAT_RGB565)), DRM_FORMAT_RGB565);
  for (const FormatPair& f : Formats()) {
    EXPECT_EQ(*DrmFromV4l2(f.v4l2), f.drm) << f.name;
  }
  EXPECT_EQ(DrmFromV4l2(0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace halloc::camera
