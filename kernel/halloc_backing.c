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
 * Exactly once, and without holding halloc_buffer.lock across the page
 * allocation (seconds for a large buffer): the first user takes the lock,
 * reads the limits of the devices attached by then, sets @backing, queues
 * the backing on halloc's own workqueue (deferred heaps; an eager one backs
 * in its creator) and drops the lock; the worker allocates; it takes the
 * lock again to publish the pages (a release store, so the fault path can
 * test them without the lock) and clear @backing, and wakes @backing_wq.
 * Meanwhile the lock stays free for what needs no pages: HALLOC_IOCTL_VIEW,
 * HALLOC_IOCTL_REVOKE, INFO, detach, debugfs (hallocd makes views and
 * revokes on one thread for every client, so none of them may wait for one
 * client's backing). What needs
 * the pages waits on @backing_wq, killably, and then finds them (or, if
 * that backing failed, tries its own). Attach waits too
 * (halloc_buffer_lock_settled): a device either joined before the backing
 * began, and its limits were taken into account, or is checked against the
 * pages once they exist; it never joins a backing already under way.
 *
 * Lock order: a CPU fault runs under mmap_lock (read) and takes
 * halloc_buffer.lock, or waits on @backing_wq, to back the buffer, so
 * mmap_lock -> buffer lock, and no backer may wait for what a fault holds:
 * between setting and clearing @backing a backer holds none of our locks
 * and only allocates pages and tables (GFP_KERNEL, as any fault handler
 * does under mmap_lock); nobody waits on @backing_wq with halloc_buffer.lock
 * held. With the lock held we vmap() and DMA-map; we never copy to or from
 * user space, nor take dma_buf.lock or a reservation lock there. The dma-buf
 * core of 6.1 calls map_dma_buf (static importer) and begin_cpu_access
 * without its locks and vmap under dma_buf.lock, which no path takes under
 * ours. From 6.2 (the common dma-buf locking convention) it calls
 * map_dma_buf, unmap_dma_buf, vmap and vunmap (and, before 6.5, mmap) with
 * the buffer's reservation lock held: the order is then dma_resv ->
 * halloc_buffer.lock, still never the reverse, but a map or vmap that
 * waits for a deferred backing holds that one lock, shared by every view
 * of the buffer, for as long (implicit-sync users of any view wait too).
 * Only 6.1 runs under test; the 6.12 build is checked by hand (README.md).
 * Debian's kernel (the test guest's) is built without lockdep
 * (CONFIG_PROVE_LOCKING is off), so this order is argued here, not
 * machine-checked.
 */
#include <linux/dma-direct.h>
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

/*
 * The highest address a backing for @dev may use. A direct-mapped device
 * that cannot reach all of RAM (a 36-bit mask on a host with memory above
 * 64 GiB) gets ZONE_DMA32's pages, the only zone below a limit the heaps
 * can ask for: pages taken anywhere would land above its mask there, and
 * every first use, by any holder, would allocate the whole size and free
 * it again for as long as the device stays attached.
 */
static u64 halloc_backing_limit(struct device *dev)
{
	u64 limit = halloc_dev_dma_limit(dev);

	if (limit < dma_get_required_mask(dev))
		limit = min_t(u64, limit, DMA_BIT_MASK(32));
	return limit;
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
	pgoff_t i;

	lockdep_assert_held(&buf->lock);
	if (!dev->dma_mask || !halloc_dev_max_seg(dev) ||
	    is_swiotlb_force_bounce(dev))
		return -EBUSY;
	if (!buf->pages) {
		/* Backing will take @dev into account, if it can. */
		WARN_ON_ONCE(buf->backing);	/* attach waits for it */
		if (buf->size > halloc_max_contig_bytes() &&
		    halloc_driver_needs_contig(halloc_dev_driver_name(dev)))
			return -EBUSY;
		/*
		 * Below 4 GiB is the lowest the heaps allocate (no ZONE_DMA):
		 * a device reaching less would make every backing allocate
		 * the whole size and free it again, for every holder.
		 */
		if (halloc_dev_dma_limit(dev) < DMA_BIT_MASK(32))
			return -EBUSY;
		return 0;
	}
	if (buf->segments > 1 &&
	    halloc_driver_needs_contig(halloc_dev_driver_name(dev)))
		return -EBUSY;
	if (get_dma_ops(dev))
		return 0;	/* an IOMMU maps what it must */
	/*
	 * As dma-direct will map them: the DMA address, not the physical one
	 * (a memory-encryption bit, a bus offset map), within the mask and
	 * the bus limit; else every mapping would bounce through swiotlb.
	 */
	for (i = 0; i < buf->nr_pages; i++)
		if (!dma_capable(dev, phys_to_dma(dev, page_to_phys(buf->pages[i])),
				 PAGE_SIZE, true))
			return -EBUSY;
	return 0;
}

/* Build @a's scatterlist over the backed pages, within its max segment. */
int halloc_attach_build_sgt(struct halloc_buffer *buf, struct halloc_attach *a)
{
	lockdep_assert_held(&buf->lock);
	if (a->sgt.sgl)
		return 0;
	/* Charged to whoever attaches or maps (a backing worker: no one). */
	return sg_alloc_table_from_pages_segment(&a->sgt, buf->pages,
						 buf->nr_pages, 0, buf->size,
						 halloc_dev_max_seg(a->dev),
						 GFP_KERNEL_ACCOUNT);
}

/*
 * Take @buf's lock once no backing is under way: 0 with the lock held and
 * @backing clear, or -EINTR (a fatal signal) without it.
 */
int halloc_buffer_lock_settled(struct halloc_buffer *buf)
{
	for (;;) {
		if (mutex_lock_killable(&buf->lock))
			return -EINTR;
		if (!buf->backing)
			return 0;
		mutex_unlock(&buf->lock);
		if (wait_event_killable(buf->backing_wq,
					!READ_ONCE(buf->backing)))
			return -EINTR;
	}
}

/* Allocate @buf's pages for the devices read at the start; no lock held. */
static int halloc_buffer_alloc_backing(struct halloc_buffer *buf, bool contig,
				       u64 limit, struct page ***pagesp)
{
	struct page **pages;
	int ret;

	if (!halloc_charge(buf->size))
		return -ENOMEM;
	pages = kvmalloc_array(buf->nr_pages, sizeof(*pages),
			       halloc_table_gfp(buf));
	if (!pages) {
		ret = -ENOMEM;
		goto uncharge;
	}
	ret = halloc_pages_alloc(buf, pages, contig, limit);
	if (ret)
		goto free_array;
	*pagesp = pages;
	return 0;

free_array:
	kvfree(pages);
uncharge:
	halloc_uncharge(buf->size);
	return ret;
}

/* Where deferred buffers are backed (see halloc_buffer_back()). */
static struct workqueue_struct *halloc_back_wq;

int halloc_back_wq_init(void)
{
	halloc_back_wq = alloc_workqueue("halloc_back", WQ_UNBOUND, 0);
	return halloc_back_wq ? 0 : -ENOMEM;
}

void halloc_back_wq_exit(void)
{
	destroy_workqueue(halloc_back_wq);	/* drains running backings */
}

/* Allocate, publish, clear @backing, wake; then @pages is set or not. */
static int halloc_buffer_finish_back(struct halloc_buffer *buf, bool contig,
				     u64 limit)
{
	struct page **pages = NULL;
	int ret;

	ret = halloc_buffer_alloc_backing(buf, contig, limit, &pages);

	/* Not killable: @backing must be cleared, and the lock is brief now. */
	mutex_lock(&buf->lock);
	/* Pairs with halloc_buffer_pages(): the layout fields are set. */
	if (!ret)
		smp_store_release(&buf->pages, pages);
	buf->back_ret = ret;
	WRITE_ONCE(buf->backing, false);
	mutex_unlock(&buf->lock);
	wake_up_all(&buf->backing_wq);
	return ret;
}

void halloc_back_work(struct work_struct *work)
{
	struct halloc_buffer *buf = container_of(work, struct halloc_buffer,
						 back_work);

	halloc_buffer_finish_back(buf, buf->back_contig, buf->back_limit);
	kref_put(&buf->ref, halloc_buffer_free);	/* the queue's */
}

/*
 * Back @buf if it is not yet: pages that suit every device attached when
 * the backing begins. Called without @buf's lock. 0 if backed (now, before,
 * or by another thread while we waited), or -ENOMEM / -EINTR with @buf
 * unbacked (a later use tries again). Killable: the wait may be as long as
 * a whole backing. A deferred buffer is backed on halloc_back_wq, not by
 * its first user: any holder may be first, a read-only one included, and
 * on its own CPU share (SCHED_IDLE, cpu.max) it kept every other holder's
 * first use waiting, a fault with its mmap_lock held, for as long as it
 * liked. A first user killed while it waits leaves; the backing goes on.
 */
int halloc_buffer_back(struct halloc_buffer *buf)
{
	bool contig = buf->heap->contig;
	u64 limit = U64_MAX;
	struct halloc_attach *a;
	int ret;

	if (halloc_buffer_pages(buf))
		return 0;
	ret = halloc_buffer_lock_settled(buf);
	if (ret)
		return ret;
	if (buf->pages) {
		mutex_unlock(&buf->lock);
		return 0;
	}
	list_for_each_entry(a, &buf->attachments, node) {
		/*
		 * Not a device attached through a view revoked since: it can
		 * never map (halloc_dmabuf_map), and its needs would otherwise
		 * outlive the revoke, forcing every backing contiguous or
		 * into ZONE_DMA32 (and dma32_max_mb) for as long as its
		 * importer stays attached.
		 */
		if (a->view->revoked)
			continue;
		if (halloc_driver_needs_contig(halloc_dev_driver_name(a->dev)))
			contig = true;
		limit = min(limit, halloc_backing_limit(a->dev));
	}
	WRITE_ONCE(buf->backing, true);
	if (!buf->heap->deferred) {
		/* An eager buffer, not exported yet: nobody else waits. */
		mutex_unlock(&buf->lock);
		return halloc_buffer_finish_back(buf, contig, limit);
	}
	/* Everyone, this caller included, waits for the queue's backing. */
	buf->back_contig = contig;
	buf->back_limit = limit;
	kref_get(&buf->ref);
	/* Never pending here: @backing was clear, and the work clears it last. */
	WARN_ON_ONCE(!queue_work(halloc_back_wq, &buf->back_work));
	mutex_unlock(&buf->lock);
	if (wait_event_killable(buf->backing_wq, !READ_ONCE(buf->backing)))
		return -EINTR;
	return halloc_buffer_pages(buf) ? 0 : READ_ONCE(buf->back_ret);
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
