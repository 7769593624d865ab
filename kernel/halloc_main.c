// SPDX-License-Identifier: GPL-2.0
/*
 * halloc_heap: dma-buf heaps with per-client views.
 *
 * Registers /dev/dma_heap/halloc-system, halloc-contig, halloc-protected and
 * halloc-deferred (the upstream dma-heap UAPI, for kernels built without DMABUF_HEAPS as
 * well as with) and the control node /dev/halloc (see
 * uapi/halloc_heap.h). Every dma-buf holds a reference on this module, so
 * it cannot be unloaded while any buffer lives.
 */
#include <linux/dma-buf.h>
#include <linux/fcntl.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <uapi/linux/dma-heap.h>

#include "halloc.h"

static unsigned int max_buffer_mb = 256;
module_param(max_buffer_mb, uint, 0644);
MODULE_PARM_DESC(max_buffer_mb, "Largest halloc-system buffer, MiB (default 256)");

static unsigned int contig_max_kb = 4096;
module_param(contig_max_kb, uint, 0644);
MODULE_PARM_DESC(contig_max_kb,
		 "Largest halloc-contig buffer, KiB (default 4096; never more than the page allocator's largest order)");

bool halloc_param_contig_dma32 = true;
module_param_named(contig_dma32, halloc_param_contig_dma32, bool, 0644);
MODULE_PARM_DESC(contig_dma32,
		 "halloc-contig allocates below 4 GiB (ZONE_DMA32), usable by 32-bit DMA devices (default Y)");

/*
 * Unset (the default): half of the machine's RAM, set at load, so that a
 * user allowed on the heaps cannot take all of it (pages are charged to no
 * memory cgroup). 0 lifts the cap.
 */
#define HALLOC_TOTAL_UNSET UINT_MAX
static unsigned int max_total_mb = HALLOC_TOTAL_UNSET;
module_param(max_total_mb, uint, 0644);
MODULE_PARM_DESC(max_total_mb,
		 "Cap on all live halloc buffers, MiB (default half of RAM; 0 = none)");

/*
 * Each attachment holds a scatterlist as long as its buffer's (up to ~2 MiB
 * for a 256 MiB buffer of scattered pages), made in the importer's context
 * (charged to its memory cgroup): a process opening DRM files and importing
 * one buffer into each would otherwise make as many as its fd limit allows.
 */
unsigned int halloc_param_max_attachments = 128;
module_param_named(max_attachments, halloc_param_max_attachments, uint, 0644);
MODULE_PARM_DESC(max_attachments,
		 "Most device attachments one buffer has at once; dma_buf_attach() past it fails with ENOSPC (default 128; 0 = no limit)");

unsigned int halloc_param_pool_max_mb = 64;
module_param_named(pool_max_mb, halloc_param_pool_max_mb, uint, 0644);
MODULE_PARM_DESC(pool_max_mb, "Most memory the page pool keeps, MiB (default 64)");

static char *contig_only_drivers = "vivid";
module_param(contig_only_drivers, charp, 0444);
MODULE_PARM_DESC(contig_only_drivers,
		 "Comma-separated drivers that need one contiguous segment; attach of a scattered buffer answers -EBUSY (default \"vivid\")");

/* Largest size any buffer may have: page counts must fit in unsigned int. */
#define HALLOC_ABS_MAX_BYTES ((size_t)SZ_2G)

static atomic64_t halloc_total_bytes = ATOMIC64_INIT(0);

/*
 * Unset (the default): a quarter of ZONE_DMA32 (the memory below 4 GiB),
 * at least 1 MiB where there is such memory, set at load. halloc-contig and buffers for 32-bit devices take their pages
 * there, and within max_total_mb alone a user allowed on the heaps could
 * empty it for every other 32-bit DMA user of the machine. 0 lifts the cap.
 */
static unsigned int dma32_max_mb = HALLOC_TOTAL_UNSET;
module_param(dma32_max_mb, uint, 0644);
MODULE_PARM_DESC(dma32_max_mb,
		 "Cap on halloc pages asked below 4 GiB (halloc-contig, buffers for 32-bit devices), MiB (default a quarter of ZONE_DMA32, at least 1; 0 = none)");

static atomic64_t halloc_dma32_bytes = ATOMIC64_INIT(0);

/* Largest physically contiguous run: halloc-contig, or a deferred backing. */
size_t halloc_max_contig_bytes(void)
{
	return min3((size_t)READ_ONCE(contig_max_kb) * SZ_1K,
		    PAGE_SIZE << HALLOC_MAX_PAGE_ORDER, HALLOC_ABS_MAX_BYTES);
}

size_t halloc_max_buffer_bytes(const struct halloc_heap *heap)
{
	if (heap->contig)
		return halloc_max_contig_bytes();
	return min((size_t)READ_ONCE(max_buffer_mb) * SZ_1M,
		   HALLOC_ABS_MAX_BYTES);
}

/*
 * Adds @size to the total only if the result stays within max_total_mb:
 * never over the cap even for a moment, so a request too large on its own
 * cannot make a concurrent one that fits fail.
 */
static bool halloc_charge_within(atomic64_t *total, unsigned int cap_mb,
				 size_t size)
{
	u64 cap = (u64)cap_mb * SZ_1M;
	s64 old = atomic64_read(total);

	if (!cap) {
		atomic64_add(size, total);
		return true;
	}
	do {
		if ((u64)old > cap || size > cap - (u64)old)
			return false;
	} while (!atomic64_try_cmpxchg(total, &old, old + size));
	return true;
}

bool halloc_charge(size_t size)
{
	return halloc_charge_within(&halloc_total_bytes,
				    READ_ONCE(max_total_mb), size);
}

void halloc_uncharge(size_t size)
{
	atomic64_sub(size, &halloc_total_bytes);
}

bool halloc_charge_dma32(size_t size)
{
	return halloc_charge_within(&halloc_dma32_bytes,
				    READ_ONCE(dma32_max_mb), size);
}

void halloc_uncharge_dma32(size_t size)
{
	atomic64_sub(size, &halloc_dma32_bytes);
}

u64 halloc_dma32_charged(void)
{
	return atomic64_read(&halloc_dma32_bytes);
}

/* Pages of ZONE_DMA32 (below 4 GiB) over all nodes; 0 without the zone. */
static u64 halloc_dma32_zone_bytes(void)
{
	u64 pages = 0;
#ifdef CONFIG_ZONE_DMA32
	int nid;

	for_each_online_node(nid)
		pages += zone_managed_pages(&NODE_DATA(nid)->node_zones[ZONE_DMA32]);
#endif
	return pages << PAGE_SHIFT;
}

bool halloc_driver_needs_contig(const char *driver)
{
	const char *p = contig_only_drivers;
	size_t len = strlen(driver);

	while (p && *p) {
		size_t n = strcspn(p, ",");

		if (n == len && !strncmp(p, driver, n))
			return true;
		p += n;
		if (*p == ',')
			p++;
	}
	return false;
}

/*
 * Hand @dmabuf to user space: reserve an fd, store it in @fd_field (inside
 * @kdata), copy @out bytes of @kdata to @uarg, and only then install the fd,
 * so a failed copy leaks neither an fd nor the buffer.
 */
static long halloc_publish(struct dma_buf *dmabuf, u32 fd_flags,
			   u32 *fd_field, void __user *uarg,
			   const void *kdata, size_t out)
{
	int fd;

	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	fd = get_unused_fd_flags(fd_flags & O_CLOEXEC);
	if (fd < 0) {
		dma_buf_put(dmabuf);
		return fd;
	}
	*fd_field = fd;
	if (copy_to_user(uarg, kdata, out)) {
		put_unused_fd(fd);
		dma_buf_put(dmabuf);
		return -EFAULT;
	}
	fd_install(fd, dmabuf->file);
	return 0;
}

/*
 * Set once every node is registered. A node is usable as soon as it is
 * registered, and if a later one then failed, the failed init would free
 * the module under any buffer made in between (its dma_buf_ops, its
 * release): no buffer is made before this. (A file opened on such a node
 * in that window still outlives the module, as for any driver whose init
 * fails after a registration; only buffers, which outlive their files,
 * are kept from it.)
 */
static bool halloc_ready;

/*
 * DMA_HEAP_IOCTL_ALLOC with the upstream rules: the struct size in the
 * command may be smaller (zero-extended) or larger (extra bytes ignored)
 * than ours, but must reach the fd field so the fd can be returned.
 */
static long halloc_heap_ioctl(struct file *file, unsigned int cmd,
			      unsigned long arg)
{
	struct miscdevice *misc = file->private_data;
	struct halloc_heap *heap = container_of(misc, struct halloc_heap, misc);
	struct dma_heap_allocation_data data = {};
	void __user *uarg = (void __user *)arg;
	size_t usize = _IOC_SIZE(cmd), in = 0, out = 0;
	struct dma_buf *dmabuf;

	if (_IOC_TYPE(cmd) != DMA_HEAP_IOC_MAGIC ||
	    _IOC_NR(cmd) != _IOC_NR(DMA_HEAP_IOCTL_ALLOC))
		return -ENOTTY;
	if (_IOC_DIR(cmd) & _IOC_WRITE)
		in = min(usize, sizeof(data));
	if (_IOC_DIR(cmd) & _IOC_READ)
		out = min(usize, sizeof(data));
	if (out < offsetofend(struct dma_heap_allocation_data, fd))
		return -EINVAL;
	if (copy_from_user(&data, uarg, in))
		return -EFAULT;

	/* O_ACCMODE itself (3) names no access: a file that may neither read
	 * nor write, yet not CPU_NONE either. */
	if (data.fd || data.fd_flags & ~DMA_HEAP_VALID_FD_FLAGS ||
	    (data.fd_flags & O_ACCMODE) == O_ACCMODE ||
	    data.heap_flags & ~DMA_HEAP_VALID_HEAP_FLAGS)
		return -EINVAL;
	/* SIZE_MAX: on 32-bit builds a u64 length would truncate. */
	if (!data.len || data.len > ALIGN_DOWN(SIZE_MAX, PAGE_SIZE))
		return -EINVAL;
	/*
	 * Opened while the module still loads (see halloc_init). Not EAGAIN:
	 * callers retry that at once (libdrm's drmIoctl, hallocd), and an
	 * init that fails never becomes ready.
	 */
	if (!smp_load_acquire(&halloc_ready))
		return -ENODEV;

	dmabuf = halloc_buffer_export(heap, PAGE_ALIGN(data.len),
				      data.fd_flags);
	return halloc_publish(dmabuf, data.fd_flags, &data.fd, uarg, &data,
			      out);
}

static long halloc_ctl_view(void __user *uarg, size_t usize)
{
	struct halloc_view_data data;
	struct dma_buf *dmabuf;
	int ret;

	if (usize < offsetofend(struct halloc_view_data, cpu_access))
		return -EINVAL;
	ret = copy_struct_from_user(&data, sizeof(data), uarg, usize);
	if (ret)
		return ret;
	dmabuf = halloc_view_export(&data);
	if (!IS_ERR(dmabuf))
		data.view_id = ((struct halloc_view *)dmabuf->priv)->id;
	return halloc_publish(dmabuf, data.fd_flags, &data.fd, uarg, &data,
			      min(usize, sizeof(data)));
}

static long halloc_ctl_info(void __user *uarg, size_t usize)
{
	struct halloc_buffer_info info;
	int ret;

	if (usize < offsetofend(struct halloc_buffer_info, fd))
		return -EINVAL;
	ret = copy_struct_from_user(&info, sizeof(info), uarg, usize);
	if (ret)
		return ret;
	if (info.reserved)
		return -EINVAL;
	ret = halloc_buffer_info(&info);
	if (ret)
		return ret;
	if (copy_to_user(uarg, &info, min(usize, sizeof(info))))
		return -EFAULT;
	return 0;
}

static long halloc_ctl_revoke(void __user *uarg, size_t usize)
{
	struct halloc_revoke_data data;
	int ret;

	if (usize < offsetofend(struct halloc_revoke_data, view_id))
		return -EINVAL;
	ret = copy_struct_from_user(&data, sizeof(data), uarg, usize);
	if (ret)
		return ret;
	return halloc_view_revoke(&data);
}

static long halloc_ctl_ioctl(struct file *file, unsigned int cmd,
			     unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	unsigned int dir = _IOC_DIR(cmd);

	if (_IOC_TYPE(cmd) != HALLOC_IOC_MAGIC)
		return -ENOTTY;
	switch (_IOC_NR(cmd)) {
	case _IOC_NR(HALLOC_IOCTL_VIEW):
		if (dir != (_IOC_READ | _IOC_WRITE))
			return -ENOTTY;
		return halloc_ctl_view(uarg, _IOC_SIZE(cmd));
	case _IOC_NR(HALLOC_IOCTL_INFO):
		if (dir != (_IOC_READ | _IOC_WRITE))
			return -ENOTTY;
		return halloc_ctl_info(uarg, _IOC_SIZE(cmd));
	case _IOC_NR(HALLOC_IOCTL_REVOKE):
		if (dir != _IOC_WRITE)
			return -ENOTTY;
		return halloc_ctl_revoke(uarg, _IOC_SIZE(cmd));
	default:
		return -ENOTTY;
	}
}

static const struct file_operations halloc_heap_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.unlocked_ioctl = halloc_heap_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static const struct file_operations halloc_ctl_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.unlocked_ioctl = halloc_ctl_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct halloc_heap halloc_heaps[] = {
	{
		.name = HALLOC_HEAP_SYSTEM,
		.contig = false,
		.misc = {
			.minor = MISC_DYNAMIC_MINOR,
			.name = HALLOC_HEAP_SYSTEM,
			.nodename = "dma_heap/" HALLOC_HEAP_SYSTEM,
			.fops = &halloc_heap_fops,
		},
	},
	{
		.name = HALLOC_HEAP_CONTIG,
		.contig = true,
		.misc = {
			.minor = MISC_DYNAMIC_MINOR,
			.name = HALLOC_HEAP_CONTIG,
			.nodename = "dma_heap/" HALLOC_HEAP_CONTIG,
			.fops = &halloc_heap_fops,
		},
	},
	{
		/* halloc-system's pages, exported without CPU access. */
		.name = HALLOC_HEAP_PROTECTED,
		.contig = false,
		.protected_content = true,
		.misc = {
			.minor = MISC_DYNAMIC_MINOR,
			.name = HALLOC_HEAP_PROTECTED,
			.nodename = "dma_heap/" HALLOC_HEAP_PROTECTED,
			.fops = &halloc_heap_fops,
		},
	},
	{
		/* No pages until first use; then contig or system pages as
		 * the devices attached by then need (halloc_backing.c). */
		.name = HALLOC_HEAP_DEFERRED,
		.contig = false,
		.deferred = true,
		.misc = {
			.minor = MISC_DYNAMIC_MINOR,
			.name = HALLOC_HEAP_DEFERRED,
			.nodename = "dma_heap/" HALLOC_HEAP_DEFERRED,
			.fops = &halloc_heap_fops,
		},
	},
};

static struct miscdevice halloc_ctl_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "halloc",
	.fops = &halloc_ctl_fops,
};

static void halloc_heaps_unregister(unsigned int n)
{
	while (n--)
		misc_deregister(&halloc_heaps[n].misc);
}

static int __init halloc_init(void)
{
	unsigned int i;
	int ret;

	if (max_total_mb == HALLOC_TOTAL_UNSET)
		max_total_mb = (u32)min_t(u64, ((u64)totalram_pages() << PAGE_SHIFT) / 2 / SZ_1M,
					  HALLOC_TOTAL_UNSET - 1);
	/*
	 * At least 1 MiB where the zone has any memory: below 4 MiB a quarter
	 * would come out 0, which means no cap at all. (With no ZONE_DMA32
	 * memory there is nothing to keep; 0 as before.)
	 */
	if (dma32_max_mb == HALLOC_TOTAL_UNSET) {
		u64 zone = halloc_dma32_zone_bytes();

		dma32_max_mb = zone ? (u32)clamp_t(u64, zone / 4 / SZ_1M, 1,
						   HALLOC_TOTAL_UNSET - 1) : 0;
	}

	ret = halloc_back_wq_init();
	if (ret)
		return ret;
	ret = halloc_pool_init();
	if (ret) {
		halloc_back_wq_exit();
		return ret;
	}
	halloc_debugfs_init();

	/* /dev/halloc first: it makes views only of buffers the heaps made. */
	ret = misc_register(&halloc_ctl_misc);
	if (ret)
		goto exit_setup;
	for (i = 0; i < ARRAY_SIZE(halloc_heaps); i++) {
		ret = misc_register(&halloc_heaps[i].misc);
		if (ret)
			goto unregister_heaps;
	}
	smp_store_release(&halloc_ready, true);
	return 0;

unregister_heaps:
	halloc_heaps_unregister(i);
	misc_deregister(&halloc_ctl_misc);
exit_setup:
	halloc_back_wq_exit();
	halloc_debugfs_exit();
	halloc_pool_exit();
	return ret;
}

static void __exit halloc_exit(void)
{
	misc_deregister(&halloc_ctl_misc);
	halloc_heaps_unregister(ARRAY_SIZE(halloc_heaps));
	/* First: a queued backing holds a buffer but not the module. */
	halloc_back_wq_exit();
	halloc_debugfs_exit();
	halloc_pool_exit();
}

module_init(halloc_init);
module_exit(halloc_exit);

MODULE_DESCRIPTION("halloc dma-buf heaps with per-client views");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(DMA_BUF);
