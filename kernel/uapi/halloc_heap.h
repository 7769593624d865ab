/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * halloc_heap.h - user-space API of the halloc_heap kernel module.
 *
 * The module exposes five character devices:
 *
 *   /dev/dma_heap/halloc-system     scattered pages (high orders first, pooled)
 *   /dev/dma_heap/halloc-contig     one physically contiguous run of pages,
 *                                   below 4 GiB (module parameter contig_dma32)
 *   /dev/dma_heap/halloc-protected  scattered pages no CPU may touch: every
 *                                   buffer and view is HALLOC_CPU_NONE
 *                                   (HALLOC_INFO_PROTECTED); only devices
 *                                   reach its content
 *   /dev/dma_heap/halloc-deferred   no pages until first use; then pages
 *                                   that suit every device attached by
 *                                   then (see "Deferred allocation")
 *   /dev/halloc                     control node: views and accounting
 *
 * The heap nodes speak the upstream dma-heap UAPI unchanged
 * (DMA_HEAP_IOCTL_ALLOC with struct dma_heap_allocation_data from
 * <linux/dma-heap.h>), so existing dma-heap users work against them.
 * Every buffer is zero-filled when it is handed out. The access mode in
 * fd_flags sets the first fd's CPU rights as a view's would be set (below):
 * O_RDWR READ_WRITE, O_RDONLY READ, O_WRONLY NONE (HALLOC_IOCTL_INFO says
 * which), for every path to the memory, an importer's mmap or
 * DMA_BUF_IOCTL_SYNC included, not only the VFS's check of mmap(2).
 *
 * Views
 * -----
 * HALLOC_IOCTL_VIEW turns a halloc dma-buf fd (a buffer or a view) into a
 * new dma-buf fd over the same pages that carries narrower rights:
 *
 *   cpu_access  HALLOC_CPU_NONE:       mmap() and DMA_BUF_IOCTL_SYNC fail
 *                                      with EPERM (a PROT_WRITE mapping
 *                                      with EACCES from the VFS first: a
 *                                      view's file is always O_RDONLY; an
 *                                      original allocated O_WRONLY, which
 *                                      counts as NONE, fails any mapping
 *                                      with EACCES).
 *               HALLOC_CPU_READ:       the view's file is opened O_RDONLY, so
 *                                      mmap(PROT_WRITE, MAP_SHARED) fails with
 *                                      EACCES (from the VFS, exactly like a
 *                                      read-only memfd); mprotect() cannot add
 *                                      PROT_WRITE later (EACCES);
 *                                      DMA_BUF_IOCTL_SYNC with
 *                                      DMA_BUF_SYNC_WRITE fails with EPERM.
 *               HALLOC_CPU_READ_WRITE: no CPU restriction.
 *               CPU rights govern user-space CPU access by the fd holder,
 *               and HALLOC_CPU_NONE the kernel's too: a kernel importer's
 *               dma_buf_vmap() of such a dma-buf gets a scratch page of
 *               its own mapped over the whole size (it reads zeros, its
 *               writes reach no one; not counted in halloc_buffer_info.
 *               vmaps). On READ and READ_WRITE views a kernel importer's
 *               vmap (e.g. videobuf2 filling a frame) is done for its
 *               device, is allowed and counts in halloc_buffer_info.vmaps.
 *               A NONE dma-buf can still be attached and mapped for DMA.
 *   drivers     with HALLOC_VIEW_RESTRICT_ATTACH, dma_buf_attach() from a
 *               device fails with EPERM unless the device's driver name is
 *               listed. The name matched is the bound driver's name
 *               (dev->driver->name), or the device name for a device with no
 *               driver bound (vgem's platform device is "vgem"). An empty
 *               list with the flag set forbids every attach. The list
 *               reaches kernel vmaps too, as far as 6.1's core lets it: a
 *               restricted view's first dma_buf_vmap() maps the buffer
 *               only while some device is attached through this view (so
 *               passed the list; videobuf2-dma-contig attaches, then
 *               vmaps to fill a frame); otherwise (videobuf2-vmalloc:
 *               uvcvideo, vivid by default, which never attach) it maps a
 *               private zeroed scratch page over the whole size, as for a
 *               revoked view: reads see zeros, writes reach no one, and
 *               the module logs a notice. The core then hands that one
 *               mapping to every kernel user of the dma-buf until the last
 *               vunmap, without asking the exporter: while a listed device
 *               is attached (or holds the real vmap), a vmap-only importer
 *               of the same dma-buf shares the real mapping, and a listed
 *               device that vmaps after an unattached importer's vmap gets
 *               the scratch page (its frames are lost) until that ends.
 *               The list keeps unlisted devices off the pages of a view
 *               whose holder does not also drive a listed one.
 *               Unused entries (from num_drivers on) are reserved and must
 *               be zero; what follows each name's NUL is not kept.
 *   name        shown by DMA_BUF_IOCTL_SET_NAME readers (fdinfo, debugfs).
 *
 * Rights only narrow: asking for more than the source fd carries (more CPU
 * access, dropping the attach restriction, or a driver the source does not
 * allow) fails with EPERM. A source fd opened without write access counts
 * as at most HALLOC_CPU_READ, one opened without read access (O_WRONLY) as
 * HALLOC_CPU_NONE. A view keeps the pages alive on its own: it
 * outlives the fd it was made from. Views nest at most
 * HALLOC_MAX_VIEW_DEPTH levels below the original: a deeper one fails with
 * EMLINK. A view of a revoked view fails with ENODEV, before any of the
 * others except a malformed request's EINVAL and a bad source fd's EBADF.
 *
 * Live revoke
 * -----------
 * HALLOC_IOCTL_REVOKE cuts one view off at once, together with every view
 * derived from it (a view made from it while the revoke runs is born
 * revoked; one asked for after it fails with ENODEV). Views form a tree rooted at the buffer's original dma-buf; the
 * authority to revoke view V is holding V itself, the original, or a view V
 * was derived from (so hallocd, which keeps every original, can revoke every
 * view it handed out, and a receiver only what it derived). On a revoked
 * view, at once:
 *   - every user-space mapping of it is shot down (its PTEs zapped); the
 *     next touch of such a mapping gets SIGBUS;
 *   - mmap() fails with ENODEV, DMA_BUF_IOCTL_SYNC with ENODEV,
 *     HALLOC_IOCTL_VIEW from it with ENODEV, dma_buf_attach() with ENODEV
 *     and dma_buf_map_attachment() of an attachment made before the revoke
 *     with ENODEV (a static importer that already holds its mapping keeps
 *     it until it unmaps: the exporter cannot tear a static importer's
 *     mapping down; vgem maps once at import, videobuf2 at the first
 *     QBUF until REQBUFS 0; a dynamic importer, e.g. amdgpu, attaching
 *     to this static exporter gets its mapping made at attach and cached
 *     by the core, whose later dma_buf_map_attachment() returns the cache
 *     without asking the exporter: it keeps mapping until it detaches);
 *   - a new dma_buf_vmap() succeeds but maps one private zeroed scratch
 *     page over the whole size, never the buffer (6.1's dma_buf_vmap()
 *     WARNs when an exporter's vmap fails, so a revoked vmap cannot fail
 *     cleanly; the kernel importer reads zeros and its writes reach no one).
 *     A kernel vmap taken before the revoke stays until its vunmap, and
 *     the core shares one vmap per dma-buf among its kernel users: while
 *     such an earlier vmap of the revoked view is outstanding, a new
 *     dma_buf_vmap() of it is handed that same mapping of the buffer
 *     (the exporter is not asked again), so the scratch page only applies
 *     once every earlier vmap has been undone.
 * The buffer's other views, and the original, are not affected. The fd
 * itself stays open (close is the holder's), its file operations that do
 * not reach the memory (fstat, lseek, INFO: HALLOC_INFO_REVOKED) work, and
 * DMA_BUF_IOCTL_EXPORT/IMPORT_SYNC_FILE still reach the shared reservation
 * object (the dma-buf core handles them without asking the exporter).
 * That object is one per buffer, shared by every view: implicit sync is
 * what makes a consumer wait for a producer's device, so any holder (a
 * READ or NONE view, a revoked one, or a device import of it) can add a
 * fence that every implicit-sync user of the buffer then waits for, up to
 * the fence's own timeout. Holding any fd of a buffer is trust enough to
 * delay its other users; it is never enough to reach memory it was not
 * given.
 * Revoking a revoked view succeeds again.
 * Errors: EINVAL (flags not 0, view_id 0 or the original's id: an original
 * cannot be revoked, close it), ENOENT (no live view of that buffer has that
 * id or descends from it), EPERM (@fd is neither that view nor an ancestor
 * of it), plus the common errors below.
 *
 * Errors common to the control node's ioctls (VIEW, INFO, REVOKE): EBADF
 * (fd is not open), EINVAL (fd is not a halloc dma-buf, or a field is out
 * of range / a reserved field is not zero / a string is not
 * NUL-terminated), E2BIG (a newer, larger struct with non-zero bytes this
 * kernel does not know), EFAULT (bad pointer), ENOTTY (unknown ioctl).
 *
 * Struct sizes are versioned by the size encoded in the ioctl number: a
 * smaller (older) struct is zero-extended; a larger one is accepted when the
 * bytes this module does not know are zero. DMA_HEAP_IOCTL_ALLOC on the heap
 * nodes does as upstream's dma-heap does instead: a larger struct's bytes
 * past the ones it knows are ignored, whatever they hold (no E2BIG).
 *
 * Heap allocation errors (DMA_HEAP_IOCTL_ALLOC): EINVAL for len 0 or a len
 * that wraps when page-aligned, non-zero fd, fd_flags outside
 * O_CLOEXEC|O_ACCMODE or with the access mode O_ACCMODE (3, no access
 * named), or non-zero heap_flags; ENOMEM when len exceeds the
 * heap's limit (module parameters max_buffer_mb, contig_max_kb,
 * max_total_mb, dma32_max_mb) or memory is short; EINTR when a fatal
 * signal came while the pages were allocated.
 *
 * Of the errors of mmap(), DMA_BUF_IOCTL_SYNC and dma_buf_attach(), a
 * revoked view's ENODEV comes first, then the rights' EPERM, then EINVAL
 * for the request's shape (MAP_PRIVATE), except where the dma-buf core
 * refuses before asking halloc: EINVAL for a mapping past the end or
 * unknown sync flags, EACCES from the VFS for a mapping the fd's open
 * mode forbids.
 *
 * dma_buf_attach() fails with ENOSPC when the buffer has max_attachments
 * (module parameter, default 128) attachments already, through any of its
 * fds not revoked: each holds a scatterlist as long as the buffer's,
 * charged to the importer's memory cgroup (as are a view's and an
 * attachment's own structures). Any holder may fill it; revoking its view
 * gives the others their room back at once.
 *
 * dma_buf_attach() also fails with EBUSY when the device bounces every
 * mapping through swiotlb (swiotlb=force, a confidential guest): a sync for
 * one holder would copy the bounce buffer over what another wrote since.
 * Only that case is recognised (is_swiotlb_force_bounce): a device whose
 * DMA ops bounce some mappings only (xen-swiotlb, a dma_range_map) is
 * attached, and a CPU sync through any view then syncs its mappings too.
 * The rights above hold for CPU access through the dma-buf (mmap, vmap,
 * DMA_BUF_IOCTL_SYNC); an importing driver that reaches the pages of the
 * sg_table itself (kmap or vmap of sg_page()) is beyond them: only the
 * drivers list keeps such a driver away from a view's buffer.
 * It fails with EBUSY too when the buffer's pages cannot be
 * used by the device as allocated: the device is direct-mapped and the DMA
 * address of some page (as dma-direct would map it: with a memory-encryption
 * bit or a bus offset applied) lies beyond its DMA mask or bus limit, or
 * its driver is listed in the module
 * parameter contig_only_drivers (default "vivid": videobuf2-dma-contig needs
 * one DMA-contiguous segment) and the buffer has more than one physically
 * contiguous segment (see halloc_buffer_info.segments; HALLOC_INFO_BELOW_4G
 * tells whether a 32-bit device can reach a buffer).
 *
 * Deferred allocation (halloc-deferred)
 * -------------------------------------
 * DMA_HEAP_IOCTL_ALLOC on halloc-deferred checks the size exactly like
 * halloc-system (EINVAL, ENOMEM past max_buffer_mb) but allocates no pages
 * and charges nothing to max_total_mb: HALLOC_IOCTL_INFO reports
 * HALLOC_INFO_NOT_BACKED and segments 0. mmap() does not allocate either.
 * The buffer is backed once, by whichever comes first: a device mapping an
 * attachment (dma_buf_map_attachment, e.g. a vgem PRIME import or a V4L2
 * QBUF), DMA_BUF_IOCTL_SYNC with DMA_BUF_SYNC_START (begin_cpu_access), a
 * kernel vmap, or a CPU page fault in a mapping. The pages are chosen from
 * every device attached at that moment:
 *   - one physically contiguous run (like halloc-contig, bounded by
 *     contig_max_kb, below 4 GiB unless contig_dma32=0) if any attached
 *     device's driver is in contig_only_drivers;
 *   - below the smallest DMA mask of the attached direct-mapped devices
 *     (ZONE_DMA32 pages when that mask is below 4 GiB);
 *   - otherwise halloc-system's pages.
 * Each device's max segment size shapes its own scatterlist, so it never
 * constrains the pages. The backing is then charged to max_total_mb.
 * Concurrent first uses back the buffer exactly once; all see the same
 * pages, and the pages never change afterwards. While a backing runs
 * (HALLOC_INFO_BACKING), the other first uses and device attaches wait for
 * it (killably: EINTR); views, revokes and INFO on the buffer do not (the
 * backing holds no lock they take), so one holder backing a large buffer
 * does not stall another process making views of it, such as hallocd.
 *
 * When the backing cannot be made, the operation that tried fails and the
 * buffer stays unbacked, for a later try (e.g. once another device has
 * detached, or memory was freed): ENOMEM (memory is short, max_total_mb is
 * reached, a contiguous run larger than contig_max_kb is needed, or no pages
 * below the DMA mask could be found), EINTR (fatal signal). The errno reaches
 * user space from DMA_BUF_IOCTL_SYNC and from the importer's own call (a
 * V4L2 QBUF, DRM_IOCTL_PRIME_FD_TO_HANDLE); a failed CPU page fault raises
 * SIGBUS.
 *
 * For a deferred buffer dma_buf_attach() only fails with EBUSY before it is
 * backed for a device that cannot do DMA at all (no DMA mask, or a maximum
 * segment below a page), one whose every mapping bounces (as above), a
 * direct-mapped one reaching less than 4 GiB (the heaps allocate no lower),
 * and for a device in contig_only_drivers when the buffer is larger than
 * any contiguous run the heap makes (contig_max_kb): attached, it would
 * fail every backing, for every holder, until it detached. Once it is
 * backed, EBUSY has the meaning above: the pages already chosen cannot serve
 * this device (for instance vivid with dma-contig attaching after vgem's
 * import backed the buffer with scattered pages). Attach devices with
 * stricter needs first.
 */
#ifndef _UAPI_HALLOC_HEAP_H
#define _UAPI_HALLOC_HEAP_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define HALLOC_CONTROL_PATH "/dev/halloc"
#define HALLOC_HEAP_SYSTEM_PATH "/dev/dma_heap/halloc-system"
#define HALLOC_HEAP_CONTIG_PATH "/dev/dma_heap/halloc-contig"
#define HALLOC_HEAP_PROTECTED_PATH "/dev/dma_heap/halloc-protected"
#define HALLOC_HEAP_DEFERRED_PATH "/dev/dma_heap/halloc-deferred"
#define HALLOC_HEAP_SYSTEM "halloc-system"
#define HALLOC_HEAP_CONTIG "halloc-contig"
#define HALLOC_HEAP_PROTECTED "halloc-protected"
#define HALLOC_HEAP_DEFERRED "halloc-deferred"

/* Length of every name field, including the terminating NUL. */
#define HALLOC_NAME_LEN 32
/* Most driver names one view can allow. */
#define HALLOC_MAX_DRIVERS 8

/* CPU access rights, ordered: a larger value is a wider right. */
#define HALLOC_CPU_NONE 0u
#define HALLOC_CPU_READ 1u
#define HALLOC_CPU_READ_WRITE 2u

/* halloc_view_data.flags / halloc_buffer_info.flags */
#define HALLOC_VIEW_RESTRICT_ATTACH (1u << 0)
#define HALLOC_VIEW_VALID_FLAGS (HALLOC_VIEW_RESTRICT_ATTACH)
/* halloc_buffer_info.flags only: this dma-buf is a view, not the original. */
#define HALLOC_INFO_IS_VIEW (1u << 31)
/* halloc_buffer_info.flags only: every page lies below 4 GiB. */
#define HALLOC_INFO_BELOW_4G (1u << 30)
/* halloc_buffer_info.flags only: from halloc-protected (no CPU, ever). */
#define HALLOC_INFO_PROTECTED (1u << 29)
/* halloc_buffer_info.flags only: this view was revoked (HALLOC_IOCTL_REVOKE). */
#define HALLOC_INFO_REVOKED (1u << 27)

/* Deepest view chain: a view of a view of ... at most this many levels. */
#define HALLOC_MAX_VIEW_DEPTH 8
/*
 * halloc_buffer_info.flags only: a halloc-deferred buffer that has no pages
 * yet (segments is 0, HALLOC_INFO_BELOW_4G is clear, nothing is charged to
 * max_total_mb).
 */
#define HALLOC_INFO_NOT_BACKED (1u << 28)
/*
 * halloc_buffer_info.flags only, with HALLOC_INFO_NOT_BACKED: a first use
 * is allocating the buffer's pages now. Uses that need the pages (mapping
 * a device, DMA_BUF_SYNC_START, a fault, a vmap) and device attaches wait
 * for it; the rest (HALLOC_IOCTL_VIEW, HALLOC_IOCTL_REVOKE, INFO, munmap,
 * detach) do not.
 */
#define HALLOC_INFO_BACKING (1u << 26)

/**
 * struct halloc_view_data - argument of HALLOC_IOCTL_VIEW
 * @fd:          out: the new view's dma-buf fd; must be 0 on input
 * @source_fd:   in: a halloc dma-buf fd (buffer or view) to derive from
 * @fd_flags:    in: 0 or O_CLOEXEC; the access mode is derived from
 *               @cpu_access (O_RDWR for READ_WRITE, O_RDONLY otherwise)
 * @cpu_access:  in: HALLOC_CPU_*
 * @flags:       in: HALLOC_VIEW_* flags
 * @num_drivers: in: entries of @drivers in use (<= HALLOC_MAX_DRIVERS);
 *               must be 0 without HALLOC_VIEW_RESTRICT_ATTACH
 * @name:        in: NUL-terminated name of the view (may be empty)
 * @drivers:     in: NUL-terminated, non-empty driver names allowed to attach
 * @view_id:     out: the new view's id, for HALLOC_IOCTL_REVOKE (absent
 *               from callers built before it: the struct grew); must be 0
 *               on input
 */
struct halloc_view_data {
	__u32 fd;
	__s32 source_fd;
	__u32 fd_flags;
	__u32 cpu_access;
	__u32 flags;
	__u32 num_drivers;
	char name[HALLOC_NAME_LEN];
	char drivers[HALLOC_MAX_DRIVERS][HALLOC_NAME_LEN];
	__u64 view_id;
};

/**
 * struct halloc_buffer_info - argument of HALLOC_IOCTL_INFO
 * @fd:          in: a halloc dma-buf fd (buffer or view)
 * @cpu_access:  out: HALLOC_CPU_* right of this dma-buf
 * @size:        out: size in bytes (page aligned)
 * @id:          out: buffer id, shared by a buffer and all its views
 * @flags:       out: HALLOC_VIEW_* flags of this dma-buf, HALLOC_INFO_IS_VIEW,
 *               HALLOC_INFO_BELOW_4G, HALLOC_INFO_PROTECTED,
 *               HALLOC_INFO_REVOKED, HALLOC_INFO_NOT_BACKED,
 *               HALLOC_INFO_BACKING
 * @num_drivers: out: entries of @drivers in use
 * @dmabufs:     out: live dma-bufs over the pages (original + views)
 * @views:       out: live views over the pages
 * @attachments: out: live device attachments (all dma-bufs of the buffer)
 * @maps:        out: attachments currently DMA-mapped
 * @vmaps:       out: dma-bufs of the buffer currently vmapped by the kernel
 * @mmaps:       out: live user-space mappings (VMAs)
 * @segments:    out: physically contiguous runs of pages (1 = contiguous;
 *               0 = not backed yet, HALLOC_INFO_NOT_BACKED)
 * @reserved:    must be 0
 * @heap:        out: heap name, e.g. "halloc-system"
 * @name:        out: the dma-buf's name (view name or DMA_BUF_SET_NAME)
 * @drivers:     out: driver names allowed to attach
 * @view_id:     out: this dma-buf's id (the original's too; unique among
 *               every dma-buf the module exported since it was loaded)
 * @file_refs:   out: references to this dma-buf's file, less the ioctl's
 *               own: its fds in every process (dups and passed fds share
 *               one file), its mappings, importers' holds, fds in flight
 * @path_refs:   out: holders of this dma-buf's dentry: its file (1) plus
 *               one per O_PATH open of it through /proc/<pid>/fd, which
 *               keeps the dma-buf (and its pages) alive without a
 *               reference to the file. file_refs 1, path_refs 1 and
 *               dmabufs 1: the fd asked about is the only holder of the
 *               buffer; closing it frees the pages. Both 0 from modules
 *               before them (the struct ends at view_id there: 392 bytes).
 */
struct halloc_buffer_info {
	__s32 fd;
	__u32 cpu_access;
	__u64 size;
	__u64 id;
	__u32 flags;
	__u32 num_drivers;
	__u32 dmabufs;
	__u32 views;
	__u32 attachments;
	__u32 maps;
	__u32 vmaps;
	__u32 mmaps;
	__u32 segments;
	__u32 reserved;
	char heap[HALLOC_NAME_LEN];
	char name[HALLOC_NAME_LEN];
	char drivers[HALLOC_MAX_DRIVERS][HALLOC_NAME_LEN];
	__u64 view_id;
	__u32 file_refs;
	__u32 path_refs;
};

/**
 * struct halloc_revoke_data - argument of HALLOC_IOCTL_REVOKE
 * @fd:       in: a halloc dma-buf fd giving the authority: the buffer's
 *            original fd, the target view itself, or any view it was
 *            derived from
 * @flags:    in: must be 0
 * @view_id:  in: the view to revoke (halloc_view_data.view_id)
 */
struct halloc_revoke_data {
	__s32 fd;
	__u32 flags;
	__u64 view_id;
};

#define HALLOC_IOC_MAGIC 'h'

/* On /dev/halloc: make a restricted view of a halloc dma-buf. */
#define HALLOC_IOCTL_VIEW _IOWR(HALLOC_IOC_MAGIC, 0x0, struct halloc_view_data)
/* On /dev/halloc: report a halloc dma-buf's accounting. */
#define HALLOC_IOCTL_INFO _IOWR(HALLOC_IOC_MAGIC, 0x1, struct halloc_buffer_info)
/* On /dev/halloc: cut a view, and every view derived from it, off live. */
#define HALLOC_IOCTL_REVOKE _IOW(HALLOC_IOC_MAGIC, 0x2, struct halloc_revoke_data)

#endif /* _UAPI_HALLOC_HEAP_H */
