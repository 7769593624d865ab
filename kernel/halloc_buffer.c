// SPDX-License-Identifier: GPL-2.0
/*
 * halloc buffers and the dma-buf ops every one of their dma-bufs uses.
 *
 * A buffer (the pages) is shared by the dma-buf returned by the heap and by
 * every view made from it; each dma-buf's priv is a struct halloc_view that
 * carries its rights. State that must agree across views (the kernel
 * mapping, device attachments and the reservation object) lives in the
 * buffer, so a vmap through one view and a CPU-access bracket through
 * another see each other. A halloc-deferred buffer gets its pages at the
 * first map, begin_cpu_access, vmap or fault (halloc_backing.c).
 */
#include <linux/dma-buf.h>
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/iosys-map.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "halloc.h"

DEFINE_MUTEX(halloc_buffers_lock);
LIST_HEAD(halloc_buffers);
static atomic64_t halloc_next_id = ATOMIC64_INIT(0);
static atomic64_t halloc_next_view_id = ATOMIC64_INIT(0);

static struct halloc_buffer *halloc_buf(struct dma_buf *dmabuf)
{
	struct halloc_view *view = dmabuf->priv;

	return view->buf;
}

/*
 * The name a view's attach allow-list matches: the bound driver's name, or
 * the device's own name when no driver is bound (vgem registers a bare
 * platform device called "vgem").
 */
const char *halloc_dev_driver_name(struct device *dev)
{
	struct device_driver *drv = READ_ONCE(dev->driver);

	return drv ? drv->name : dev_name(dev);
}

bool halloc_view_allows_driver(const struct halloc_view *view,
			       const char *name)
{
	u32 i;

	if (!(view->flags & HALLOC_VIEW_RESTRICT_ATTACH))
		return true;
	for (i = 0; i < view->num_drivers; i++)
		if (!strcmp(view->drivers[i], name))
			return true;
	return false;
}

static int halloc_cpu_allowed(const struct halloc_view *view,
			      enum dma_data_direction dir)
{
	/* DMA_NONE would reach the DMA API's BUG_ON in the sync: a bug. */
	if (!valid_dma_direction(dir))
		return -EINVAL;
	if (view->cpu_access == HALLOC_CPU_NONE)
		return -EPERM;
	if (view->cpu_access == HALLOC_CPU_READ && dir != DMA_FROM_DEVICE)
		return -EPERM;
	return 0;
}

void halloc_buffer_free(struct kref *ref)
{
	struct halloc_buffer *buf = container_of(ref, struct halloc_buffer,
						 ref);

	mutex_lock(&halloc_buffers_lock);
	list_del(&buf->node);
	mutex_unlock(&halloc_buffers_lock);

	WARN_ON_ONCE(buf->vmap_cnt || buf->nr_attach);
	/* Backers and their waiters hold a reference (a dma-buf's or VMA's). */
	WARN_ON_ONCE(buf->backing || wq_has_sleeper(&buf->backing_wq));
	halloc_buffer_unback(buf);
	dma_resv_fini(&buf->resv);
	mutex_destroy(&buf->lock);
	kfree(buf);
}

static int halloc_dmabuf_attach(struct dma_buf *dmabuf,
				struct dma_buf_attachment *attachment)
{
	struct halloc_view *view = dmabuf->priv;
	struct halloc_buffer *buf = view->buf;
	struct device *dev = attachment->dev;
	struct halloc_attach *a;
	unsigned int max;
	int ret;

	/* Revoked outranks the list (rechecked under the lock below). */
	if (READ_ONCE(view->revoked))
		return -ENODEV;
	if (!halloc_view_allows_driver(view, halloc_dev_driver_name(dev)))
		return -EPERM;
	/* Made for the importer: charged to its memory cgroup. */
	a = kzalloc(sizeof(*a), GFP_KERNEL_ACCOUNT);
	if (!a)
		return -ENOMEM;
	a->dev = dev;
	a->view = view;

	/*
	 * Check and join with no backing under way: either the buffer is
	 * backed and @dev must fit the pages, or it is not and the backing
	 * will see @dev in the list (its scatterlist is then built at map
	 * time). A backing that began without @dev is waited for.
	 */
	ret = halloc_buffer_lock_settled(buf);
	if (ret) {
		kfree(a);
		return ret;
	}
	max = READ_ONCE(halloc_param_max_attachments);
	if (view->revoked)
		ret = -ENODEV;
	else if (max && buf->nr_attach - buf->nr_attach_revoked >= max)
		ret = -ENOSPC;
	else
		ret = halloc_buffer_fits_device(buf, dev);
	if (!ret && buf->pages)
		ret = halloc_attach_build_sgt(buf, a);
	if (ret)
		goto unlock;
	list_add(&a->node, &buf->attachments);
	buf->nr_attach++;
	view->nr_attach++;
	attachment->priv = a;
unlock:
	mutex_unlock(&buf->lock);
	if (ret)
		kfree(a);
	return ret;
}

/*
 * An attachment made through a view revoked since is unmapped without the
 * CPU sync: its device is owed nothing (halloc_buffer_sync skips it), and
 * the sync would copy a bounce buffer (swiotlb) left as it was at the
 * revoke back over what the holders wrote since, or on a non-coherent
 * device invalidate lines no bracket cleaned for it. Under buf->lock.
 */
static unsigned long halloc_attach_unmap_attrs(const struct halloc_attach *a)
{
	return a->view->revoked ? DMA_ATTR_SKIP_CPU_SYNC : 0;
}

static void halloc_dmabuf_detach(struct dma_buf *dmabuf,
				 struct dma_buf_attachment *attachment)
{
	struct halloc_view *view = dmabuf->priv;
	struct halloc_buffer *buf = view->buf;
	struct halloc_attach *a = attachment->priv;

	mutex_lock(&buf->lock);
	list_del(&a->node);
	buf->nr_attach--;
	view->nr_attach--;
	if (view->revoked)
		buf->nr_attach_revoked--;
	if (a->mapped) {
		/* The importer detached without unmapping; do it for it. */
		dma_unmap_sgtable(a->dev, &a->sgt, a->dir,
				  halloc_attach_unmap_attrs(a));
		buf->nr_maps--;
	}
	mutex_unlock(&buf->lock);

	attachment->priv = NULL;
	sg_free_table(&a->sgt);
	kfree(a);
}

static struct sg_table *halloc_dmabuf_map(struct dma_buf_attachment *attachment,
					  enum dma_data_direction dir)
{
	struct halloc_attach *a = attachment->priv;
	struct halloc_view *view = attachment->dmabuf->priv;
	struct halloc_buffer *buf = view->buf;
	int ret;

	/* DMA_NONE would reach the DMA API's BUG_ON: an importer's bug. */
	if (!a || !valid_dma_direction(dir))
		return ERR_PTR(-EINVAL);	/* or not attached through us */
	if (READ_ONCE(view->revoked))
		return ERR_PTR(-ENODEV);
	/* Backed without the lock; a failure leaves it for a later map. */
	ret = halloc_buffer_back(buf);
	if (ret)
		return ERR_PTR(ret);

	mutex_lock(&buf->lock);
	if (view->revoked) {
		ret = -ENODEV;
		goto unlock;
	}
	if (a->mapped) {
		ret = -EBUSY;
		goto unlock;
	}
	ret = halloc_attach_build_sgt(buf, a);
	if (ret)
		goto unlock;
	ret = dma_map_sgtable(a->dev, &a->sgt, dir, 0);
	if (ret)
		goto unlock;
	a->mapped = true;
	a->dir = dir;
	buf->nr_maps++;
unlock:
	mutex_unlock(&buf->lock);
	return ret ? ERR_PTR(ret) : &a->sgt;
}

static void halloc_dmabuf_unmap(struct dma_buf_attachment *attachment,
				struct sg_table *sgt,
				enum dma_data_direction dir)
{
	struct halloc_attach *a = attachment->priv;
	struct halloc_buffer *buf = halloc_buf(attachment->dmabuf);

	mutex_lock(&buf->lock);
	if (!WARN_ON_ONCE(!a->mapped || sgt != &a->sgt)) {
		/* as mapped */
		dma_unmap_sgtable(a->dev, sgt, a->dir,
				  halloc_attach_unmap_attrs(a));
		a->mapped = false;
		buf->nr_maps--;
	}
	mutex_unlock(&buf->lock);
}

static void halloc_dmabuf_release(struct dma_buf *dmabuf)
{
	struct halloc_view *view = dmabuf->priv;
	struct halloc_buffer *buf = view->buf;

	struct inode *inode;

	mutex_lock(&buf->lock);
	buf->dmabufs--;
	if (view->is_view)
		buf->views--;
	list_del(&view->node);
	view->dmabuf = NULL;
	inode = view->inode;
	view->inode = NULL;
	mutex_unlock(&buf->lock);

	iput(inode);
	WARN_ON_ONCE(view->scratch);	/* the core vunmaps before release */
	kfree(view);
	kref_put(&buf->ref, halloc_buffer_free);
}

/*
 * Hand the buffer to the CPU (@for_cpu) or back to the devices, for a CPU
 * access in direction @dir (the bracket's: DMA_FROM_DEVICE for a read).
 */
static void halloc_buffer_sync(struct halloc_buffer *buf, bool for_cpu,
			       enum dma_data_direction dir)
{
	struct halloc_attach *a;

	lockdep_assert_held(&buf->lock);
	/*
	 * The end of a read-only bracket has no CPU writes to push. Syncing
	 * for the devices anyway would, on a bouncing device mapped
	 * DMA_BIDIRECTIONAL, copy the CPU's pages over its bounce buffer and
	 * lose what the device wrote there since: any read-only holder may
	 * send END|READ, with or without a START.
	 */
	if (!for_cpu && dir == DMA_FROM_DEVICE)
		return;
	if (buf->vmap_cnt) {
		if (for_cpu)
			invalidate_kernel_vmap_range(buf->vaddr, buf->size);
		else
			flush_kernel_vmap_range(buf->vaddr, buf->size);
	}
	/*
	 * Each attachment in the direction it was mapped with, as the DMA API
	 * asks, not the caller's: a read-only holder's START|READ must not,
	 * on a bouncing or non-coherent device, copy a bounce buffer or
	 * invalidate lines over what another holder wrote for a device that
	 * only reads (DMA_TO_DEVICE: nothing comes back to the CPU).
	 */
	list_for_each_entry(a, &buf->attachments, node) {
		/*
		 * Not a device attached through a view revoked since: nothing
		 * it does is owed to the buffer's holders any more, and its
		 * attachments are outside max_attachments (a revoke gives their
		 * room back), so syncing them would let revokes lengthen every
		 * bracket held under the lock without bound.
		 */
		if (!a->mapped || a->view->revoked)
			continue;
		if (for_cpu && a->dir != DMA_TO_DEVICE)
			dma_sync_sgtable_for_cpu(a->dev, &a->sgt, a->dir);
		else if (!for_cpu)
			dma_sync_sgtable_for_device(a->dev, &a->sgt, a->dir);
	}
}

/*
 * Both ends of a CPU access bracket: check the view's right, then sync.
 * The start backs a deferred buffer (its errno is the ioctl's); the end of
 * a bracket on an unbacked buffer has nothing to sync.
 */
static int halloc_dmabuf_cpu_access(struct dma_buf *dmabuf,
				    enum dma_data_direction dir, bool begin)
{
	struct halloc_view *view = dmabuf->priv;
	struct halloc_buffer *buf = view->buf;
	int ret;

	/* Revoked outranks the rights (rechecked under the lock below). */
	if (READ_ONCE(view->revoked))
		return -ENODEV;
	ret = halloc_cpu_allowed(view, dir);
	if (ret)
		return ret;
	if (begin) {
		ret = halloc_buffer_back(buf);	/* without the lock */
		if (ret)
			return ret;
	}
	mutex_lock(&buf->lock);
	if (view->revoked)
		ret = -ENODEV;
	else
		halloc_buffer_sync(buf, begin, dir);
	mutex_unlock(&buf->lock);
	return ret;
}

static int halloc_dmabuf_begin_cpu_access(struct dma_buf *dmabuf,
					  enum dma_data_direction dir)
{
	return halloc_dmabuf_cpu_access(dmabuf, dir, true);
}

static int halloc_dmabuf_end_cpu_access(struct dma_buf *dmabuf,
					enum dma_data_direction dir)
{
	return halloc_dmabuf_cpu_access(dmabuf, dir, false);
}

/* A VMA's vm_private_data is its view; the VMA's file keeps it alive. */
static void halloc_vm_open(struct vm_area_struct *vma)
{
	struct halloc_view *view = vma->vm_private_data;

	atomic_inc(&view->buf->mmaps);
}

static void halloc_vm_close(struct vm_area_struct *vma)
{
	struct halloc_view *view = vma->vm_private_data;

	atomic_dec(&view->buf->mmaps);
}

/*
 * Under mmap_lock (read). A deferred buffer's first fault backs it (see the
 * lock order in halloc_backing.c); if that fails the fault raises SIGBUS,
 * not VM_FAULT_OOM, which would retry the fault forever when the cause is
 * max_total_mb or a device constraint rather than memory pressure.
 * The PTE is inserted under buf->lock so that a revoke (which marks the
 * view under the same lock and zaps after it) either zaps it or makes us
 * see the view revoked: no PTE survives a revoke.
 */
static vm_fault_t halloc_vm_fault(struct vm_fault *vmf)
{
	struct halloc_view *view = vmf->vma->vm_private_data;
	struct halloc_buffer *buf = view->buf;
	vm_fault_t ret = VM_FAULT_SIGBUS;

	if (vmf->pgoff >= buf->nr_pages || READ_ONCE(view->revoked) ||
	    halloc_buffer_back(buf))
		return VM_FAULT_SIGBUS;
	if (mutex_lock_killable(&buf->lock))
		return VM_FAULT_SIGBUS;	/* dying: nothing to map */
	if (!view->revoked)
		ret = vmf_insert_pfn(vmf->vma, vmf->address,
				     page_to_pfn(halloc_buffer_pages(buf)[vmf->pgoff]));
	mutex_unlock(&buf->lock);
	return ret;
}

static const struct vm_operations_struct halloc_vm_ops = {
	.open = halloc_vm_open,
	.close = halloc_vm_close,
	.fault = halloc_vm_fault,
};

static int halloc_dmabuf_mmap(struct dma_buf *dmabuf,
			      struct vm_area_struct *vma)
{
	struct halloc_view *view = dmabuf->priv;
	struct halloc_buffer *buf = view->buf;

	/* Errors in the uapi's order: revoked, then rights, then the shape. */
	if (READ_ONCE(view->revoked))
		return -ENODEV;
	if (view->cpu_access == HALLOC_CPU_NONE)
		return -EPERM;
	if (view->cpu_access == HALLOC_CPU_READ && vma->vm_flags & VM_WRITE)
		return -EPERM;
	/* Private (copy-on-write) mappings of device memory make no sense. */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (vma->vm_pgoff > buf->nr_pages ||
	    vma_pages(vma) > buf->nr_pages - vma->vm_pgoff)
		return -EINVAL;
	if (view->cpu_access == HALLOC_CPU_READ)
		halloc_vm_flags_clear(vma, VM_MAYWRITE);
	/* A revoke racing past the first check finds no PTE; faults see it. */
	if (READ_ONCE(view->revoked))
		return -ENODEV;

	/* Pages are inserted on fault; mremap() may not grow the mapping. */
	halloc_vm_flags_set(vma, VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
	vma->vm_ops = &halloc_vm_ops;
	vma->vm_private_data = view;
	halloc_vm_open(vma);
	return 0;
}

static int halloc_dmabuf_vmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct halloc_view *view = dmabuf->priv;
	struct halloc_buffer *buf = view->buf;
	bool tried = false;
	int backed = 0;
	int ret = 0;

	/*
	 * A view without CPU access gets the scratch mapping a revoked view
	 * gets (below): its importer reads zeros and its writes reach no one,
	 * so no CPU, a kernel importer's included, touches the buffer. It had
	 * no vmap op at all before, so dma_buf_vmap() failed, and a driver
	 * that does not check (vivid with videobuf2-dma-contig: attach, map,
	 * then vb2_plane_vaddr() NULL) oopsed filling a frame, its capture
	 * thread dead with vivid's lock held. Failing here instead would WARN
	 * in 6.1's dma_buf_vmap(). Read and read-write views map for their
	 * kernel importers (vb2-vmalloc, or vivid filling a frame).
	 *
	 * A deferred buffer is backed here if nothing backed it before. When
	 * that fails (-ENOMEM: memory short or max_total_mb reached; -EINTR:
	 * the caller was killed while another thread's backing ran) the
	 * importer gets the scratch mapping (below), not the errno: 6.1's
	 * dma_buf_vmap() WARNs on any failed vmap, and this one a user can
	 * bring about. The buffer stays unbacked for a later try; we do not
	 * back with __GFP_NOFAIL past the accounting cap. vmap() itself
	 * failing is still an errno (and a WARN), as for any exporter.
	 *
	 * A view restricted to some drivers maps the pages only while a
	 * device has attached through it (and so passed the list): vb2
	 * dma-contig attaches, then vmaps to fill a frame. A kernel importer
	 * that only vmaps (videobuf2-vmalloc) names no device, so on such a
	 * view it gets the scratch mapping a revoked view gets: it reads
	 * zeros and its writes reach no one, where it would otherwise write
	 * into pages the list kept every unlisted device away from.
	 */
again:
	mutex_lock(&buf->lock);
	if (view->revoked || view->cpu_access == HALLOC_CPU_NONE ||
	    (view->flags & HALLOC_VIEW_RESTRICT_ATTACH && !view->nr_attach)) {
		if (!view->revoked && view->cpu_access != HALLOC_CPU_NONE)
			pr_notice_ratelimited("halloc: view %llu: vmap by a kernel importer that did not attach, of a view restricted to some drivers: scratch page\n",
					      view->id);
		ret = halloc_scratch_vmap(view, map);
		goto unlock;
	}
	if (!buf->pages && !tried) {
		/* Back without the lock (it may take seconds), then recheck. */
		mutex_unlock(&buf->lock);
		backed = halloc_buffer_back(buf);
		tried = true;
		goto again;
	}
	if (!buf->vmap_cnt) {
		void *vaddr;

		if (!buf->pages) {
			/*
			 * 6.1's dma_buf_vmap() WARNs on any failure, and this
			 * one a user can bring about (max_total_mb reached):
			 * the importer gets the scratch mapping a revoked view
			 * gets, and the buffer stays unbacked for a later try.
			 */
			pr_warn_ratelimited("halloc: buffer %llu: no backing for a kernel vmap (%d): scratch page\n",
					    buf->id, backed);
			ret = halloc_scratch_vmap(view, map);
			goto unlock;
		}
		vaddr = vmap(buf->pages, buf->nr_pages, VM_MAP, PAGE_KERNEL);
		if (!vaddr) {
			ret = -ENOMEM;
			goto unlock;
		}
		buf->vaddr = vaddr;
	}
	buf->vmap_cnt++;
	iosys_map_set_vaddr(map, buf->vaddr);
unlock:
	mutex_unlock(&buf->lock);
	return ret;
}

static void halloc_dmabuf_vunmap(struct dma_buf *dmabuf,
				 struct iosys_map *map)
{
	struct halloc_view *view = dmabuf->priv;
	struct halloc_buffer *buf = view->buf;

	mutex_lock(&buf->lock);
	if (halloc_scratch_vunmap(view, map))
		;	/* a scratch mapping (revoked or unattached view): freed */
	else if (!WARN_ON_ONCE(!buf->vmap_cnt) && !--buf->vmap_cnt) {
		vunmap(buf->vaddr);
		buf->vaddr = NULL;
	}
	mutex_unlock(&buf->lock);
	iosys_map_clear(map);
}

/*
 * No pin/unpin: those make an exporter "dynamic" (able to move its
 * memory); halloc pages never move, so importers get the static contract.
 * Every view has the same ops; its rights are checked in them (a view
 * without CPU access vmaps the scratch page).
 */
static const struct dma_buf_ops halloc_dmabuf_ops = {
	.attach = halloc_dmabuf_attach,
	.detach = halloc_dmabuf_detach,
	.map_dma_buf = halloc_dmabuf_map,
	.unmap_dma_buf = halloc_dmabuf_unmap,
	.release = halloc_dmabuf_release,
	.begin_cpu_access = halloc_dmabuf_begin_cpu_access,
	.end_cpu_access = halloc_dmabuf_end_cpu_access,
	.mmap = halloc_dmabuf_mmap,
	.vmap = halloc_dmabuf_vmap,
	.vunmap = halloc_dmabuf_vunmap,
};

/* True if @dmabuf was exported by this module (its priv is a halloc_view). */
bool halloc_dmabuf_is_ours(const struct dma_buf *dmabuf)
{
	return dmabuf->ops == &halloc_dmabuf_ops;
}

/*
 * Export a dma-buf for @view, which owns one reference on view->buf, as a
 * child of @parent (NULL for a buffer's original dma-buf; the caller keeps
 * @parent alive and has checked its depth). On failure the caller still
 * owns @view and its reference.
 */
struct dma_buf *halloc_export(struct halloc_view *view,
			      const struct halloc_view *parent, u32 flags)
{
	struct halloc_buffer *buf = view->buf;
	DEFINE_DMA_BUF_EXPORT_INFO(exp_info);
	struct dma_buf *dmabuf;

	view->id = atomic64_inc_return(&halloc_next_view_id);
	if (parent) {
		view->depth = parent->depth + 1;
		memcpy(view->lineage, parent->lineage,
		       parent->depth * sizeof(view->lineage[0]));
		view->lineage[parent->depth] = parent->id;
	}

	exp_info.exp_name = buf->heap->name;
	exp_info.owner = THIS_MODULE;
	exp_info.ops = &halloc_dmabuf_ops;
	exp_info.size = buf->size;
	exp_info.flags = flags;
	exp_info.resv = &buf->resv;
	exp_info.priv = view;
	dmabuf = dma_buf_export(&exp_info);
	if (IS_ERR(dmabuf))
		return dmabuf;

	mutex_lock(&buf->lock);
	view->dmabuf = dmabuf;
	view->inode = file_inode(dmabuf->file);
	ihold(view->inode);
	list_add_tail(&view->node, &buf->view_list);
	/* Revoked since the caller looked: born revoked, like the subtree. */
	if (parent && parent->revoked)
		WRITE_ONCE(view->revoked, true);
	buf->dmabufs++;
	if (view->is_view)
		buf->views++;
	mutex_unlock(&buf->lock);
	return dmabuf;
}

static struct halloc_buffer *halloc_buffer_create(const struct halloc_heap *heap,
						  size_t size)
{
	struct halloc_buffer *buf;
	int ret;

	if (size > halloc_max_buffer_bytes(heap) ||
	    size >> PAGE_SHIFT > totalram_pages())
		return ERR_PTR(-ENOMEM);

	buf = kzalloc(sizeof(*buf), GFP_KERNEL_ACCOUNT);
	if (!buf)
		return ERR_PTR(-ENOMEM);
	kref_init(&buf->ref);
	buf->heap = heap;
	buf->size = size;
	buf->nr_pages = size >> PAGE_SHIFT;
	mutex_init(&buf->lock);
	init_waitqueue_head(&buf->backing_wq);
	INIT_WORK(&buf->back_work, halloc_back_work);
	INIT_LIST_HEAD(&buf->attachments);
	INIT_LIST_HEAD(&buf->view_list);
	atomic_set(&buf->mmaps, 0);

	/* Eager heaps back now, deferred at first use (halloc_backing.c). */
	if (!heap->deferred) {
		ret = halloc_buffer_back(buf);
		if (ret)
			goto free_buf;
	}

	dma_resv_init(&buf->resv);
	buf->id = atomic64_inc_return(&halloc_next_id);
	mutex_lock(&halloc_buffers_lock);
	list_add_tail(&buf->node, &halloc_buffers);
	mutex_unlock(&halloc_buffers_lock);
	return buf;

free_buf:
	mutex_destroy(&buf->lock);
	kfree(buf);
	return ERR_PTR(ret);
}

/* A new buffer of @size (page aligned, non-zero) and its full-rights dma-buf. */
struct dma_buf *halloc_buffer_export(const struct halloc_heap *heap,
				     size_t size, u32 fd_flags)
{
	struct halloc_buffer *buf;
	struct halloc_view *view;
	struct dma_buf *dmabuf;

	view = kzalloc(sizeof(*view), GFP_KERNEL_ACCOUNT);
	if (!view)
		return ERR_PTR(-ENOMEM);
	/* A protected buffer has no CPU access from its first fd on; views
	 * only narrow, so none of them ever has any. */
	view->cpu_access = heap->protected_content ? HALLOC_CPU_NONE :
						     HALLOC_CPU_READ_WRITE;
	/*
	 * The fd's access mode caps the rights, as it caps a view's source
	 * (halloc_view_narrows): importers that mmap or sync for the holder
	 * (dma_buf_mmap() through a DRM driver's own fd) see only these.
	 */
	if ((fd_flags & O_ACCMODE) == O_WRONLY)
		view->cpu_access = HALLOC_CPU_NONE;
	else if ((fd_flags & O_ACCMODE) == O_RDONLY)
		view->cpu_access = min_t(u32, view->cpu_access, HALLOC_CPU_READ);

	buf = halloc_buffer_create(heap, size);
	if (IS_ERR(buf)) {
		kfree(view);
		return ERR_CAST(buf);
	}
	view->buf = buf;	/* takes over the initial reference */

	dmabuf = halloc_export(view, NULL, fd_flags);
	if (IS_ERR(dmabuf)) {
		kfree(view);
		kref_put(&buf->ref, halloc_buffer_free);
	}
	return dmabuf;
}
