/* SPDX-License-Identifier: GPL-2.0 */
/*
 * halloc_heap internals shared by the module's files.
 *
 * Object model:
 *
 *   struct halloc_buffer  the pages. Reference counted (kref): one reference
 *                         per dma-buf exported over it. A halloc-deferred
 *                         buffer has none until its first use
 *                         (halloc_backing.c); every other buffer is backed
 *                         in halloc_buffer_create().
 *   struct halloc_view    the priv of one dma-buf: the original buffer fd and
 *                         every view made with HALLOC_IOCTL_VIEW each have
 *                         one, carrying that dma-buf's rights. Views form a
 *                         tree under the original (@lineage), which
 *                         HALLOC_IOCTL_REVOKE cuts by subtree.
 *   struct halloc_attach  one device attachment, with its own sg_table copy.
 *
 * Lock order: halloc_buffers_lock -> halloc_buffer.lock. The dma-buf core
 * may hold dma_buf.lock (vmap) around our callbacks; we never take it. A
 * CPU fault takes halloc_buffer.lock under mmap_lock (so that no PTE
 * survives a revoke) and, to back a deferred buffer, may sleep on
 * halloc_buffer.backing_wq there until the backing (on halloc's own
 * workqueue) ends (a backer holds none of our locks and waits for nothing
 * while it allocates: halloc_backing.c); a revoke zaps mappings
 * (i_mmap_rwsem) after halloc_buffer.lock, or under it only when it has no
 * room for its list: mmap_lock -> halloc_buffer.lock -> i_mmap_rwsem, the
 * mm's own order extended.
 */
#ifndef HALLOC_H
#define HALLOC_H

#include <linux/dma-buf.h>
#include <linux/dma-resv.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/types.h>
#include <linux/version.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "uapi/halloc_heap.h"

/*
 * Kernel API compat: the module builds against bookworm's 6.1 and its 6.12
 * (bookworm-security, so DKMS builds for it too); the version checks stay
 * here.
 */

/*
 * The page allocator's largest order: MAX_ORDER - 1 until 6.4 made it
 * inclusive, MAX_PAGE_ORDER since 6.8.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
#define HALLOC_MAX_PAGE_ORDER	MAX_PAGE_ORDER
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define HALLOC_MAX_PAGE_ORDER	MAX_ORDER
#else
#define HALLOC_MAX_PAGE_ORDER	(MAX_ORDER - 1)
#endif

/* vma->vm_flags is read-only since 6.3. */
static inline void halloc_vm_flags_set(struct vm_area_struct *vma,
				       vm_flags_t flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

static inline void halloc_vm_flags_clear(struct vm_area_struct *vma,
					 vm_flags_t flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_clear(vma, flags);
#else
	vma->vm_flags &= ~flags;
#endif
}

/*
 * A registered shrinker named @name running @count and @scan, or NULL;
 * undone by halloc_shrinker_free(). The core allocates shrinkers since 6.7
 * (shrinker_alloc(), shrinker_register(): register_shrinker() went).
 */
typedef unsigned long halloc_shrink_fn(struct shrinker *shrinker,
				       struct shrink_control *sc);

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
static inline struct shrinker *halloc_shrinker_create(const char *name,
						       halloc_shrink_fn *count,
						       halloc_shrink_fn *scan)
{
	struct shrinker *shrinker = shrinker_alloc(0, "%s", name);

	if (!shrinker)
		return NULL;
	shrinker->count_objects = count;
	shrinker->scan_objects = scan;
	shrinker->seeks = DEFAULT_SEEKS;
	shrinker_register(shrinker);
	return shrinker;
}

static inline void halloc_shrinker_free(struct shrinker *shrinker)
{
	shrinker_free(shrinker);
}
#else
static inline struct shrinker *halloc_shrinker_create(const char *name,
						       halloc_shrink_fn *count,
						       halloc_shrink_fn *scan)
{
	struct shrinker *shrinker = kzalloc(sizeof(*shrinker), GFP_KERNEL);

	if (!shrinker)
		return NULL;
	shrinker->count_objects = count;
	shrinker->scan_objects = scan;
	shrinker->seeks = DEFAULT_SEEKS;
	if (register_shrinker(shrinker, "%s", name))
		goto free_shrinker;
	return shrinker;

free_shrinker:
	kfree(shrinker);
	return NULL;
}

static inline void halloc_shrinker_free(struct shrinker *shrinker)
{
	unregister_shrinker(shrinker);
	kfree(shrinker);
}
#endif

struct halloc_heap {
	const char *name;
	bool contig;
	bool protected_content;		/* no CPU access, ever */
	bool deferred;			/* backed at first use, not export */
	struct miscdevice misc;
};

struct halloc_buffer {
	struct kref ref;
	u64 id;
	const struct halloc_heap *heap;
	size_t size;
	pgoff_t nr_pages;
	struct dma_resv resv;		/* shared by every dma-buf of the buffer */
	/* The fields above are immutable after halloc_buffer_create(). */

	/*
	 * The backing. @pages is NULL until the buffer is backed (at create,
	 * or at first use for halloc-deferred), then never changes until the
	 * buffer is freed. It is published last, with smp_store_release()
	 * under @lock, after @chunks, @segments, @below_4g and @contig are
	 * filled in: read it with halloc_buffer_pages() (acquire) outside
	 * @lock; once it is non-NULL those fields are immutable too. The one
	 * thread that set @backing writes those fields without @lock while
	 * it allocates (halloc_backing.c); nobody reads them before @pages.
	 */
	struct page **pages;		/* nr_pages order-0 pages */
	struct sg_table chunks;		/* one entry per allocated chunk */
	unsigned int segments;		/* physically contiguous runs */
	bool below_4g;			/* every page below 4 GiB */
	bool contig;			/* one run from the contig allocator */
	bool dma32_charged;		/* asked below 4 GiB: dma32_max_mb */

	struct mutex lock;		/* guards the fields below, but
					 * @backing_wq, @mmaps and @node */
	bool backing;			/* a first use is allocating the pages,
					 * without @lock; written under @lock,
					 * read without it by the waiters'
					 * wake-up test */
	wait_queue_head_t backing_wq;	/* woken when a backing ends, backed
					 * or not; every sleeper holds a
					 * reference on the buffer */
	/* halloc-deferred: a backing runs on halloc_back_wq, not on the CPU
	 * share of whichever holder came first (halloc_backing.c). */
	struct work_struct back_work;
	bool back_contig;		/* the devices' needs, read under @lock */
	u64 back_limit;			/* when the backing was queued */
	int back_ret;			/* the last backing's result */
	struct list_head attachments;	/* of halloc_attach.node */
	struct list_head view_list;	/* of halloc_view.node: every dma-buf */
	void *vaddr;			/* kernel mapping while vmap_cnt > 0 */
	unsigned int vmap_cnt;
	unsigned int dmabufs;
	unsigned int views;
	unsigned int nr_attach;
	/* Of those, made through views revoked since: max_attachments spares them. */
	unsigned int nr_attach_revoked;
	unsigned int nr_maps;

	atomic_t mmaps;			/* live VMAs */
	struct list_head node;		/* in halloc_buffers, guarded by
					 * halloc_buffers_lock */
};

struct halloc_view {
	/* Immutable after export. */
	struct halloc_buffer *buf;
	u64 id;				/* unique since load; HALLOC_IOCTL_REVOKE */
	u32 cpu_access;
	u32 flags;			/* HALLOC_VIEW_* */
	bool is_view;
	u32 depth;			/* 0: the original; a view: parent's + 1 */
	u64 lineage[HALLOC_MAX_VIEW_DEPTH]; /* ids of the ancestors, root first */
	u32 num_drivers;
	char drivers[HALLOC_MAX_DRIVERS][HALLOC_NAME_LEN];

	/* Guarded by buf->lock. */
	bool revoked;			/* set once, never cleared */
	struct dma_buf *dmabuf;		/* ours; set at export, NULL at release */
	/*
	 * The dma-buf's inode, held from export to release: revoke zaps its
	 * mapping. Not reached through dmabuf->file, which is freed when the
	 * last fd closes while the dma-buf (and this view) lives on as long as
	 * anything pins its dentry (an O_PATH open of /proc/self/fd/N).
	 */
	struct inode *inode;
	struct list_head node;		/* in halloc_buffer.view_list */
	/* Devices attached through this view (halloc_dmabuf_vmap). */
	u32 nr_attach;
	/* A vmap that must not reach the pages (halloc_scratch_vmap). */
	struct page *scratch;
	void *scratch_vaddr;
};

struct halloc_attach {
	struct device *dev;
	struct halloc_view *view;	/* attached through; lives as long */
	struct sg_table sgt;		/* private copy, DMA-mapped while mapped;
					 * built at attach, or at first map when
					 * the buffer was not backed yet (sgl
					 * NULL until then, guarded by
					 * halloc_buffer.lock) */
	struct list_head node;		/* in halloc_buffer.attachments */
	enum dma_data_direction dir;	/* guarded by halloc_buffer.lock */
	bool mapped;			/* guarded by halloc_buffer.lock */
};

/* halloc_main.c: module parameters. */
extern unsigned int halloc_param_pool_max_mb;
extern unsigned int halloc_param_max_attachments;
extern bool halloc_param_contig_dma32;
size_t halloc_max_buffer_bytes(const struct halloc_heap *heap);
size_t halloc_max_contig_bytes(void);
bool halloc_charge(size_t size);		/* false: over max_total_mb */
void halloc_uncharge(size_t size);
bool halloc_charge_dma32(size_t size);	/* false: over dma32_max_mb */
void halloc_uncharge_dma32(size_t size);
u64 halloc_dma32_charged(void);
bool halloc_driver_needs_contig(const char *driver);

/* halloc_pages.c */
int halloc_pages_alloc(struct halloc_buffer *buf, struct page **pages,
		       bool contig, u64 dma_limit);
void halloc_pages_free(struct halloc_buffer *buf);
int halloc_pool_init(void);
void halloc_pool_exit(void);
unsigned long halloc_pool_pages(void);

/* halloc_backing.c */
static inline struct page **halloc_buffer_pages(struct halloc_buffer *buf)
{
	/* Pairs with the smp_store_release() in halloc_buffer_back(). */
	return smp_load_acquire(&buf->pages);
}
/*
 * GFP of a backing's own tables (page array, scatterlist). A deferred
 * buffer is backed by a kworker, which no fatal signal stops: there they
 * may fail after reclaim made no progress rather than call the OOM killer
 * (its pages likewise: halloc_pages.c).
 */
static inline gfp_t halloc_table_gfp(const struct halloc_buffer *buf)
{
	return buf->heap->deferred ?
	       GFP_KERNEL | __GFP_RETRY_MAYFAIL | __GFP_NOWARN : GFP_KERNEL;
}
int halloc_buffer_back(struct halloc_buffer *buf);
void halloc_back_work(struct work_struct *work);
int halloc_back_wq_init(void);
void halloc_back_wq_exit(void);
int halloc_buffer_lock_settled(struct halloc_buffer *buf);
void halloc_buffer_unback(struct halloc_buffer *buf);
int halloc_buffer_fits_device(struct halloc_buffer *buf, struct device *dev);
int halloc_attach_build_sgt(struct halloc_buffer *buf,
			    struct halloc_attach *a);

/* halloc_buffer.c */
extern struct mutex halloc_buffers_lock;
extern struct list_head halloc_buffers;	/* guarded by halloc_buffers_lock */
const char *halloc_dev_driver_name(struct device *dev);
bool halloc_view_allows_driver(const struct halloc_view *view,
			       const char *name);
void halloc_buffer_free(struct kref *ref);
bool halloc_dmabuf_is_ours(const struct dma_buf *dmabuf);
struct dma_buf *halloc_export(struct halloc_view *view,
			      const struct halloc_view *parent, u32 flags);
struct dma_buf *halloc_buffer_export(const struct halloc_heap *heap,
				     size_t len, u32 fd_flags);

/* halloc_view.c */
struct dma_buf *halloc_view_export(const struct halloc_view_data *data);
int halloc_buffer_info(struct halloc_buffer_info *info);

/* halloc_revoke.c */
int halloc_view_revoke(const struct halloc_revoke_data *data);
int halloc_scratch_vmap(struct halloc_view *view, struct iosys_map *map);
bool halloc_scratch_vunmap(struct halloc_view *view, struct iosys_map *map);

/* halloc_debugfs.c */
void halloc_debugfs_init(void);
void halloc_debugfs_exit(void);

#endif /* HALLOC_H */
