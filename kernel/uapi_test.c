/*
 * Compiles the UAPI header as C (it is also used from C++) and pins its ABI:
 * the layouts are part of the contract with user space and must not change,
 * only grow at the end (view_id: 312 -> 320 and 384 -> 392 bytes;
 * file_refs and path_refs: 392 -> 400; the module still takes the old
 * sizes, zero-extended).
 */
#include <stddef.h>

#include "kernel/uapi/halloc_heap.h"

#define ABI(cond) _Static_assert(cond, #cond)

ABI(sizeof(struct halloc_view_data) == 320);
ABI(offsetof(struct halloc_view_data, view_id) == 312);
ABI(offsetof(struct halloc_view_data, fd) == 0);
ABI(offsetof(struct halloc_view_data, source_fd) == 4);
ABI(offsetof(struct halloc_view_data, cpu_access) == 12);
ABI(offsetof(struct halloc_view_data, name) == 24);
ABI(offsetof(struct halloc_view_data, drivers) == 56);

ABI(sizeof(struct halloc_buffer_info) == 400);
ABI(offsetof(struct halloc_buffer_info, view_id) == 384);
ABI(offsetof(struct halloc_buffer_info, file_refs) == 392);
ABI(offsetof(struct halloc_buffer_info, path_refs) == 396);
ABI(offsetof(struct halloc_buffer_info, size) == 8);
ABI(offsetof(struct halloc_buffer_info, id) == 16);
ABI(offsetof(struct halloc_buffer_info, segments) == 56);
ABI(offsetof(struct halloc_buffer_info, heap) == 64);
ABI(offsetof(struct halloc_buffer_info, drivers) == 128);

ABI(HALLOC_CPU_NONE < HALLOC_CPU_READ && HALLOC_CPU_READ < HALLOC_CPU_READ_WRITE);
ABI(_IOC_SIZE(HALLOC_IOCTL_VIEW) == sizeof(struct halloc_view_data));
ABI(_IOC_SIZE(HALLOC_IOCTL_INFO) == sizeof(struct halloc_buffer_info));
ABI(_IOC_NR(HALLOC_IOCTL_VIEW) != _IOC_NR(HALLOC_IOCTL_INFO));

ABI(sizeof(struct halloc_revoke_data) == 16);
ABI(offsetof(struct halloc_revoke_data, view_id) == 8);
ABI(_IOC_SIZE(HALLOC_IOCTL_REVOKE) == sizeof(struct halloc_revoke_data));
ABI(_IOC_DIR(HALLOC_IOCTL_REVOKE) == _IOC_WRITE);
ABI(_IOC_NR(HALLOC_IOCTL_REVOKE) != _IOC_NR(HALLOC_IOCTL_INFO));

int main(void) { return 0; }
