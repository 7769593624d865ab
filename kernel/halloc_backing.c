// SPDX-License-Identifier: GPL-2.0
/*
 * Backing a buffer with pages, and whether pages suit a device.
 *
 * Eager heaps back a buffer in halloc_buffer_create(), before anyone can
 * attach. halloc-deferred exports buffers without pages and backs them at
 * the first map_dma_buf, begin_cpu_access, vmap or CPU page fault, from the
 * needs of every device attached by then (the model of dma_buf_ops(9):
 * "allocate backing storage (if not yet done)"; attach "might return -EBUSY
 * to signal that backing storage is already allocated and incompatible").
 *
 * Exactly once: halloc_buffer.lock serializes backing with itself and with
 * attach (an attach either happens before the backing, and its device is
 * taken into account, or after, and is checked against the pages). The
 * pages pointer is published last with a release store, so the fault path
 * can test it without the lock (acquire load) and take the lock only while
 * the buffer is unbacked.
 *
 * Lock order: a CPU fault runs under mmap_lock (read) and takes
 * halloc_buffer.lock to back the buffer, so mmap_lock -> buffer lock. No
 * path takes mmap_lock under the buffer lock: with it held we only allocate
 * pages and tables (GFP_KERNEL, as any fault handler does under mmap_lock),
 * vmap() and DMA-map; we never copy to or from user space, nor take
 * dma_buf.lock or a reservation lock there. The dma-buf core calls
 * map_dma_buf (6.1, static importer) and begin_cpu_access without its locks
 * and vmap under dma_buf.lock, which no path takes under ours. Debian's
 * kernel (the test guest's) is built without lockdep (CONFIG_PROVE_LOCKING
 * is off), so this order is argued here, not machine-checked.
 */
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/swiotlb.h>

#include "halloc.h"

/* Highest physical address @dev can reach, U64_MAX if no limit applies. */
static u64 halloc_dev_dma_limit(struct device *dev)
{
	/*
	 * Only a direct-mapped device sees physical addresses; behind an
	 * IOMMU (dma_ops) or a bus offset map the mask applies elsewhere.
	 */
	if (get_dma_ops(dev) || dev->dma_range_map)
		return U64_MAX;
	return min_not_zero(dma_get_mask(dev), dev->bus_dma_limit);
}

static unsigned int halloc_dev_max_seg(struct device *dev)
{
	return round_down(dma_get_max_seg_size(dev), PAGE_SIZE);
}

/*
 * -EBUSY when @dev cannot use the buffer: no DMA at all, a device whose
 * every mapping bounces through swiotlb (swiotlb=force, a confidential
 * guest), or (once backed) the pages as allocated cannot serve it, or
 * (not yet backed) no backing could: a device that needs one contiguous run
 * of a buffer larger than any run the heap makes would, attached, fail
 * every backing for every holder until it detaches. Refuse rather than
 * let swiotlb bounce a buffer the CPU may be mapping at the same time: a
 * sync for one holder would copy the bounce buffer over what another
 * wrote since.
 */
int halloc_buffer_fits_device(struct halloc_buffer *buf, struct device *dev)
{
	u64 limit;
	pgoff_t i;

	lockdep_assert_held(&buf->lock);
	if (!dev->dma_mask || !halloc_dev_max_seg(dev) ||
	    is_swiotlb_force_bounce(dev))
		return -EBUSY;
	if (!buf->pages) {
		/* Backing will take @dev into account, if it can. */
		if (buf->size > halloc_max_contig_bytes() &&
		    halloc_driver_needs_contig(halloc_dev_driver_name(dev)))
			return -EBUSY;
		return 0;
	}
	if (buf->segments > 1 &&
	    halloc_driver_needs_contig(halloc_dev_driver_name(dev)))
		return -EBUSY;
	limit = halloc_dev_dma_limit(dev);
	for (i = 0; i < buf->nr_pages; i++)
		if (page_to_phys(buf->pages[i]) + PAGE_SIZE - 1 > limit)
			return -EBUSY;
	return 0;
}

/* Build @a's scatterlist over the backed pages, within its max segment. */
int halloc_attach_build_sgt(struct halloc_buffer *buf, struct halloc_attach *a)
{
	lockdep_assert_held(&buf->lock);
	if (a->sgt.sgl)
		return 0;
	return sg_alloc_table_from_pages_segment(&a->sgt, buf->pages,
						 buf->nr_pages, 0, buf->size,
						 halloc_dev_max_seg(a->dev),
						 GFP_KERNEL);
}

/*
 * Back @buf if it is not yet: pages that suit every attached device.
 * 0 if backed (now or before), or -ENOMEM / -EINTR with @buf unchanged.
 */
int halloc_buffer_back_locked(struct halloc_buffer *buf)
{
	bool contig = buf->heap->contig;
	u64 limit = U64_MAX;
	struct halloc_attach *a;
	struct page **pages;
	int ret;

	lockdep_assert_held(&buf->lock);
	if (buf->pages)
		return 0;
	list_for_each_entry(a, &buf->attachments, node) {
		if (halloc_driver_needs_contig(halloc_dev_driver_name(a->dev)))
			contig = true;
		limit = min(limit, halloc_dev_dma_limit(a->dev));
	}

	if (!halloc_charge(buf->size))
		return -ENOMEM;
	pages = kvmalloc_array(buf->nr_pages, sizeof(*pages), GFP_KERNEL);
	if (!pages) {
		ret = -ENOMEM;
		goto uncharge;
	}
	ret = halloc_pages_alloc(buf, pages, contig, limit);
	if (ret)
		goto free_array;
	/* Pairs with halloc_buffer_pages(): the layout fields are set. */
	smp_store_release(&buf->pages, pages);
	return 0;

free_array:
	kvfree(pages);
uncharge:
	halloc_uncharge(buf->size);
	return ret;
}

/* halloc_buffer_back_locked() for callers without the lock (CPU fault). */
int halloc_buffer_back(struct halloc_buffer *buf)
{
	int ret;

	if (halloc_buffer_pages(buf))
		return 0;
	/*
	 * Killable: another thread may hold the lock through a whole backing
	 * (seconds for a large buffer); a fault waiting here must not keep its
	 * process from dying.
	 */
	if (mutex_lock_killable(&buf->lock))
		return -EINTR;
	ret = halloc_buffer_back_locked(buf);
	mutex_unlock(&buf->lock);
	return ret;
}

/* Free the backing, if any, of a buffer nobody references any more. */
void halloc_buffer_unback(struct halloc_buffer *buf)
{
	if (!buf->pages)
		return;
	halloc_pages_free(buf);
	kvfree(buf->pages);
	buf->pages = NULL;
	halloc_uncharge(buf->size);
}
