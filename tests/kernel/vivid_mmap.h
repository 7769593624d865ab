// vivid streaming into its own buffers (V4L2_MEMORY_MMAP, videobuf2's
// allocation), each exported once as a dma-buf with VIDIOC_EXPBUF: the
// driver-allocated floor a hallocd pipeline is measured against
// (pipeline_test.cc). Single-planar API, one memory plane.
#ifndef HALLOC_TESTS_KERNEL_VIVID_MMAP_H_
#define HALLOC_TESTS_KERNEL_VIVID_MMAP_H_

#include <errno.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <sys/ioctl.h>

#include <cstring>
#include <string>
#include <vector>

#include "tests/kernel/guest_util.h"

namespace halloc_test {

class VividMmapStream {
 public:
  VividMmapStream() = default;
  VividMmapStream(const VividMmapStream&) = delete;
  VividMmapStream& operator=(const VividMmapStream&) = delete;
  ~VividMmapStream() {
    if (!fd_.valid()) return;
    int type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    Xioctl(VIDIOC_STREAMOFF, &type);
    dmabufs_.clear();  // vb2 frees the memory once the last dma-buf is gone
    v4l2_requestbuffers req = {};
    req.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    req.memory = V4L2_MEMORY_MMAP;
    Xioctl(VIDIOC_REQBUFS, &req);
  }

  // Opens `path` for `v4l2_format` at width x height, asks for `fps`
  // (VIDIOC_S_PARM, the nearest the driver has) and `count` buffers, and
  // exports each; "" or what failed.
  std::string Open(const std::string& path, uint32_t v4l2_format, uint32_t width, uint32_t height,
                   double fps, uint32_t count) {
    fd_.reset(open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
    if (!fd_.valid()) return path + ": " + strerror(errno);
    fmt_.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    fmt_.fmt.pix.width = width;
    fmt_.fmt.pix.height = height;
    fmt_.fmt.pix.pixelformat = v4l2_format;
    fmt_.fmt.pix.field = V4L2_FIELD_NONE;
    if (int r = Xioctl(VIDIOC_S_FMT, &fmt_)) return Error("VIDIOC_S_FMT", r);
    if (fmt_.fmt.pix.width != width || fmt_.fmt.pix.height != height ||
        fmt_.fmt.pix.pixelformat != v4l2_format) {
      return "VIDIOC_S_FMT set another format or size";
    }
    v4l2_streamparm parm = {};
    parm.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    parm.parm.capture.timeperframe = {1000, uint32_t(fps * 1000)};
    if (int r = Xioctl(VIDIOC_S_PARM, &parm)) return Error("VIDIOC_S_PARM", r);
    v4l2_requestbuffers req = {};
    req.count = count;
    req.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    req.memory = V4L2_MEMORY_MMAP;
    if (int r = Xioctl(VIDIOC_REQBUFS, &req)) return Error("VIDIOC_REQBUFS", r);
    for (uint32_t i = 0; i < req.count; ++i) {
      v4l2_buffer b = {};
      b.index = i;
      b.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
      b.memory = V4L2_MEMORY_MMAP;
      if (int r = Xioctl(VIDIOC_QUERYBUF, &b)) return Error("VIDIOC_QUERYBUF", r);
      length_ = b.length;
      v4l2_exportbuffer exp = {};
      exp.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
      exp.index = i;
      exp.flags = O_RDONLY | O_CLOEXEC;
      if (int r = Xioctl(VIDIOC_EXPBUF, &exp)) return Error("VIDIOC_EXPBUF", r);
      dmabufs_.emplace_back(exp.fd);
    }
    return "";
  }

  // The exported buffers (the stream keeps them), in index order.
  std::vector<UniqueFd>& dmabufs() { return dmabufs_; }
  const v4l2_pix_format& format() const { return fmt_.fmt.pix; }
  uint32_t length() const { return length_; }  // bytes of one buffer

  // Queues every buffer and starts streaming; 0 or -errno.
  int Start() {
    for (uint32_t i = 0; i < dmabufs_.size(); ++i) {
      if (int r = Queue(i)) return r;
    }
    int type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    return Xioctl(VIDIOC_STREAMON, &type);
  }

  int Queue(uint32_t index) {
    v4l2_buffer b = {};
    b.index = index;
    b.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    b.memory = V4L2_MEMORY_MMAP;
    return Xioctl(VIDIOC_QBUF, &b);
  }

  // Waits up to 10 s for the next filled buffer; its index or -errno.
  int Dequeue() {
    v4l2_buffer b = {};
    b.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    b.memory = V4L2_MEMORY_MMAP;
    int r;
    while ((r = Xioctl(VIDIOC_DQBUF, &b)) == -EAGAIN) {
      pollfd p = {fd_.get(), POLLIN, 0};
      if (poll(&p, 1, 10000) == 0) return -ETIMEDOUT;
    }
    return r < 0 ? r : int(b.index);
  }

 private:
  // ioctl retried on EINTR only (guest_util's Ioctl also retries EAGAIN,
  // which from DQBUF means "no frame yet"): 0 or -errno.
  int Xioctl(unsigned long request, void* arg) {
    int r;
    do {
      r = ioctl(fd_.get(), request, arg);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
  }
  static std::string Error(const char* what, int r) {
    return std::string(what) + ": " + strerror(-r);
  }

  UniqueFd fd_;
  v4l2_format fmt_ = {};
  uint32_t length_ = 0;
  std::vector<UniqueFd> dmabufs_;
};

}  // namespace halloc_test

#endif  // HALLOC_TESTS_KERNEL_VIVID_MMAP_H_
