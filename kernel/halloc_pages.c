// SPDX-License-Identifier: GPL-2.0
/*
 * Page allocation for halloc buffers.
 *
 * halloc-system takes chunks of order 8, 4 and 0 (1 MiB, 64 KiB, 4 KiB),
 * largest first and never retrying an order that already failed, like the
 * kernel's own system heap. Each chunk is split into order-0 pages so that
 * every page of a buffer is an ordinary, independently refcounted page.
 * Freed chunks are zeroed and kept in a per-order pool (bounded by the
 * pool_max_mb module parameter, drained by a shrinker) so that repeated
 * allocations are fast; fresh chunks come zeroed from the page allocator.
 *
 * halloc-contig takes one physically contiguous run with alloc_pages_exact()
 * (bounded by contig_max_kb and by the page allocator's largest order),
 * below 4 GiB unless contig_dma32=0, where devices with a 32-bit DMA mask
 * (cameras, vivid) can reach it.
 *
 * A halloc-deferred backing is either of the two, with a DMA limit from the
 * devices attached by then: below 4 GiB, both take ZONE_DMA32 pages (the
 * system allocator then bypasses the pool, whose chunks may lie anywhere);
 * a result that still exceeds the limit (a mask below 4 GiB) is freed and
 * the allocation fails with -ENOMEM.
 */
#include <linux/gfp.h>
#include <linux/highmem.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#include "halloc.h"

#define HALLOC_HIGH_ORDER_GFP \
	((GFP_HIGHUSER | __GFP_ZERO | __GFP_NOWARN | __GFP_NORETRY) & \
	 ~__GFP_RECLAIM)
#define HALLOC_LOW_ORDER_GFP (GFP_HIGHUSER | __GFP_ZERO)
/*
 * A deferred buffer is backed on halloc_back_wq (halloc_backing.c), by a
 * kworker: no fatal signal can stop it, and order-0 GFP_HIGHUSER would call
 * the OOM killer on whatever else runs, for a buffer its holders may not
 * even wait for any more. There the order-0 pages may fail instead, after
 * reclaim made no progress: the first use gets -ENOMEM (SIGBUS for a
 * fault), as when max_total_mb refuses.
 */
#define HALLOC_QUEUED_LOW_ORDER_GFP (HALLOC_LOW_ORDER_GFP | __GFP_RETRY_MAYFAIL)
#define HALLOC_CONTIG_GFP \
	(GFP_KERNEL | __GFP_ZERO | __GFP_NOWARN | __GFP_RETRY_MAYFAIL)
/* GFP_HIGHUSER's zone bit cannot be combined with __GFP_DMA32. */
#define HALLOC_DMA32(gfp) (((gfp) & ~__GFP_HIGHMEM) | __GFP_DMA32)

static const unsigned int halloc_orders[] = { 8, 4, 0 };
#define HALLOC_NR_ORDERS ARRAY_SIZE(halloc_orders)

struct halloc_pool {
	unsigned int order;
	spinlock_t lock;		/* guards @chunks */
	struct list_head chunks;	/* zeroed chunks, linked by first
					 * page's lru */
};

static struct halloc_pool halloc_pools[HALLOC_NR_ORDERS];
static atomic_long_t halloc_pool_nr;	/* pages held by all pools */

unsigned long halloc_pool_pages(void)
{
	return atomic_long_read(&halloc_pool_nr);
}

static void halloc_chunk_free(struct page *page, unsigned int order)
{
	unsigned long i;

	for (i = 0; i < (1UL << order); i++)
		__free_page(page + i);
}

/* Return a chunk to its pool (zeroing it) or to the page allocator. */
static void halloc_chunk_put(struct halloc_pool *pool, struct page *page)
{
	unsigned long i, nr = 1UL << pool->order;

	if (atomic_long_add_return(nr, &halloc_pool_nr) >
	    (long)READ_ONCE(halloc_param_pool_max_mb) * (SZ_1M / PAGE_SIZE)) {
		atomic_long_sub(nr, &halloc_pool_nr);
		halloc_chunk_free(page, pool->order);
		return;
	}
	for (i = 0; i < nr; i++)
		clear_highpage(page + i);
	spin_lock(&pool->lock);
	list_add(&page->lru, &pool->chunks);
	spin_unlock(&pool->lock);
}

static struct page *halloc_chunk_get(struct halloc_pool *pool, bool dma32,
				     bool queued)
{
	gfp_t gfp = pool->order ? HALLOC_HIGH_ORDER_GFP :
		    queued      ? HALLOC_QUEUED_LOW_ORDER_GFP :
				  HALLOC_LOW_ORDER_GFP;
	struct page *page;

	if (dma32) {
		page = alloc_pages(HALLOC_DMA32(gfp), pool->order);
		goto split;
	}
	spin_lock(&pool->lock);
	page = list_first_entry_or_null(&pool->chunks, struct page, lru);
	if (page)
		list_del(&page->lru);
	spin_unlock(&pool->lock);
	if (page) {
		atomic_long_sub(1L << pool->order, &halloc_pool_nr);
		return page;
	}

	page = alloc_pages(gfp, pool->order);
split:
	if (page && pool->order)
		split_page(page, pool->order);
	return page;
}

static struct halloc_pool *halloc_pool_of(struct scatterlist *sg)
{
	unsigned int i;

	for (i = 0; i < HALLOC_NR_ORDERS; i++)
		if (sg->length == PAGE_SIZE << halloc_orders[i])
			return &halloc_pools[i];
	return NULL;
}

/* Fill buf->chunks and @pages from a list of chunks (first page lru). */
static int halloc_chunks_to_table(struct halloc_buffer *buf,
				  struct page **pages,
				  struct list_head *list, unsigned int n)
{
	struct scatterlist *sg;
	struct page *page, *tmp;
	pgoff_t p = 0;
	unsigned int i;
	int ret;

	ret = sg_alloc_table(&buf->chunks, n, halloc_table_gfp(buf));
	if (ret)
		return ret;
	sg = buf->chunks.sgl;
	list_for_each_entry_safe(page, tmp, list, lru) {
		unsigned int nr = page_private(page);

		list_del(&page->lru);
		set_page_private(page, 0);
		sg_set_page(sg, page, nr * PAGE_SIZE, 0);
		for (i = 0; i < nr; i++)
			pages[p++] = page + i;
		sg = sg_next(sg);
	}
	return 0;
}

static int halloc_system_alloc(struct halloc_buffer *buf, struct page **pages,
			       bool dma32)
{
	/* Backed by a kworker (see HALLOC_QUEUED_LOW_ORDER_GFP). */
	const bool queued = buf->heap->deferred;
	unsigned long remaining = buf->size;
	unsigned int idx = 0, n = 0;
	struct page *page, *tmp;
	LIST_HEAD(list);
	int ret;

	while (remaining) {
		struct halloc_pool *pool = NULL;

		/*
		 * A chunk's allocation without reclaim (high orders) never
		 * sleeps, and zeroing 1 MiB under a slow CPU takes a while:
		 * without this, backing a large buffer could keep everything
		 * else off this CPU for its whole duration on a kernel without
		 * full preemption (Debian's: voluntary).
		 */
		cond_resched();
		/* (The caller's signals: a queued backing has none.) */
		if (!queued && fatal_signal_pending(current)) {
			ret = -EINTR;
			goto free_chunks;
		}
		page = NULL;
		for (; idx < HALLOC_NR_ORDERS; idx++) {
			pool = &halloc_pools[idx];
			if (remaining < (PAGE_SIZE << pool->order))
				continue;
			page = halloc_chunk_get(pool, dma32, queued);
			if (page)
				break;
		}
		if (!page) {
			ret = -ENOMEM;
			goto free_chunks;
		}
		/* The page count of the chunk rides in the first page. */
		set_page_private(page, 1U << pool->order);
		list_add_tail(&page->lru, &list);
		remaining -= PAGE_SIZE << pool->order;
		n++;
	}

	ret = halloc_chunks_to_table(buf, pages, &list, n);
	if (ret)
		goto free_chunks;
	return 0;

free_chunks:
	list_for_each_entry_safe(page, tmp, &list, lru) {
		unsigned int nr = page_private(page);

		list_del(&page->lru);
		set_page_private(page, 0);
		halloc_chunk_free(page, ilog2(nr));
	}
	return ret;
}

static int halloc_contig_alloc(struct halloc_buffer *buf, struct page **pages,
			       bool dma32)
{
	struct page *page;
	void *vaddr;
	pgoff_t i;
	int ret;

	if (buf->size > halloc_max_contig_bytes())
		return -ENOMEM;
	vaddr = alloc_pages_exact(buf->size, HALLOC_CONTIG_GFP |
				  (dma32 ? GFP_DMA32 : 0));
	if (!vaddr)
		return -ENOMEM;
	page = virt_to_page(vaddr);

	ret = sg_alloc_table(&buf->chunks, 1, halloc_table_gfp(buf));
	if (ret)
		goto free_run;
	sg_set_page(buf->chunks.sgl, page, buf->size, 0);
	for (i = 0; i < buf->nr_pages; i++)
		pages[i] = page + i;
	return 0;

free_run:
	free_pages_exact(vaddr, buf->size);
	return ret;
}

/*
 * Count the physically contiguous runs of @pages into buf->segments, note
 * their reach; return the highest physical address.
 */
static phys_addr_t halloc_note_layout(struct halloc_buffer *buf,
				      struct page **pages)
{
	phys_addr_t top = 0;
	pgoff_t i;

	buf->segments = 1;
	for (i = 0; i < buf->nr_pages; i++) {
		unsigned long pfn = page_to_pfn(pages[i]);

		if (i && pfn != page_to_pfn(pages[i - 1]) + 1)
			buf->segments++;
		top = max(top, PFN_PHYS(pfn) + PAGE_SIZE - 1);
	}
	buf->below_4g = top <= U32_MAX;
	return top;
}

/*
 * Allocate buf->nr_pages zeroed pages into @pages (an array of nr_pages)
 * and buf->chunks, every page at or below @dma_limit, one contiguous run if
 * @contig; set buf->segments, buf->below_4g and buf->contig. On failure
 * nothing stays allocated and buf->segments is 0.
 */
int halloc_pages_alloc(struct halloc_buffer *buf, struct page **pages,
		       bool contig, u64 dma_limit)
{
	bool dma32 = dma_limit <= U32_MAX;
	/* Pages asked from ZONE_DMA32 are charged to dma32_max_mb too. */
	bool zone_dma32 = dma32 ||
			  (contig && READ_ONCE(halloc_param_contig_dma32));
	int ret;

	if (zone_dma32 && !halloc_charge_dma32(buf->size))
		return -ENOMEM;
	if (contig)
		ret = halloc_contig_alloc(buf, pages, zone_dma32);
	else
		ret = halloc_system_alloc(buf, pages, dma32);
	if (ret) {
		if (zone_dma32)
			halloc_uncharge_dma32(buf->size);
		return ret;
	}
	buf->contig = contig;
	buf->dma32_charged = zone_dma32;
	if (halloc_note_layout(buf, pages) > dma_limit) {
		halloc_pages_free(buf);
		buf->segments = 0;
		buf->below_4g = false;
		return -ENOMEM;
	}
	return 0;
}

void halloc_pages_free(struct halloc_buffer *buf)
{
	struct scatterlist *sg;
	unsigned int i;

	if (buf->contig) {
		free_pages_exact(page_address(sg_page(buf->chunks.sgl)),
				 buf->size);
	} else {
		for_each_sgtable_sg(&buf->chunks, sg, i) {
			struct halloc_pool *pool = halloc_pool_of(sg);

			if (WARN_ON_ONCE(!pool))
				continue;
			halloc_chunk_put(pool, sg_page(sg));	/* zeroes it */
			cond_resched();
		}
	}
	sg_free_table(&buf->chunks);
	if (buf->dma32_charged)
		halloc_uncharge_dma32(buf->size);
	buf->dma32_charged = false;
}

/* Free up to @nr pages from the pools, highest order first. */
static unsigned long halloc_pool_drain(unsigned long nr)
{
	unsigned long freed = 0;
	unsigned int i;

	for (i = 0; i < HALLOC_NR_ORDERS && freed < nr; i++) {
		struct halloc_pool *pool = &halloc_pools[i];

		while (freed < nr) {
			struct page *page;

			spin_lock(&pool->lock);
			page = list_first_entry_or_null(&pool->chunks,
							struct page, lru);
			if (page)
				list_del(&page->lru);
			spin_unlock(&pool->lock);
			if (!page)
				break;
			atomic_long_sub(1L << pool->order, &halloc_pool_nr);
			halloc_chunk_free(page, pool->order);
			freed += 1UL << pool->order;
		}
	}
	return freed;
}

static unsigned long halloc_shrink_count(struct shrinker *shrinker,
					 struct shrink_control *sc)
{
	unsigned long nr = halloc_pool_pages();

	return nr ? nr : SHRINK_EMPTY;
}

static unsigned long halloc_shrink_scan(struct shrinker *shrinker,
					struct shrink_control *sc)
{
	unsigned long freed = halloc_pool_drain(sc->nr_to_scan);

	return freed ? freed : SHRINK_STOP;
}

static struct shrinker *halloc_shrinker;

int halloc_pool_init(void)
{
	unsigned int i;

	for (i = 0; i < HALLOC_NR_ORDERS; i++) {
		halloc_pools[i].order = halloc_orders[i];
		spin_lock_init(&halloc_pools[i].lock);
		INIT_LIST_HEAD(&halloc_pools[i].chunks);
	}
	halloc_shrinker = halloc_shrinker_create("halloc-pool",
						 halloc_shrink_count,
						 halloc_shrink_scan);
	return halloc_shrinker ? 0 : -ENOMEM;
}

void halloc_pool_exit(void)
{
	halloc_shrinker_free(halloc_shrinker);
	halloc_pool_drain(ULONG_MAX);
}
