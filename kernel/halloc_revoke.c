// SPDX-License-Identifier: GPL-2.0
/*
 * Live revoke (HALLOC_IOCTL_REVOKE): cut a view, and every view derived
 * from it, off at once; and the scratch kernel mapping a revoked view gets
 * instead of its buffer. See uapi/halloc_heap.h for the contract.
 *
 * Every dma-buf of a buffer is on buf->view_list with its lineage (the ids
 * of its ancestors, root first), so a subtree is found without parent
 * pointers that could keep a chain of closed views alive.
 */
#include <linux/dma-buf.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/iosys-map.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "halloc.h"

/* Position of @id in @view's lineage, depth if it is @view's own, or -1. */
static int halloc_lineage_pos(const struct halloc_view *view, u64 id)
{
	u32 i;

	for (i = 0; i < view->depth; i++)
		if (view->lineage[i] == id)
			return i;
	return view->id == id ? view->depth : -1;
}

/*
 * Mark @view revoked; its user-space mappings are shot down by the caller
 * once buf->lock is dropped. Every VMA of the dma-buf is on its inode's
 * mapping, and the view holds that inode while it is on the list: take a
 * reference of our own into @inodes (the view may be released as soon as
 * the lock goes). Never through view->dmabuf->file: the last close frees
 * the file while an O_PATH reference to its dentry can keep the dma-buf,
 * and the view, alive (the slot may by then be another file).
 */
static void halloc_view_cut(struct halloc_view *view, struct inode **inodes,
			    unsigned int *n)
{
	lockdep_assert_held(&view->buf->lock);
	if (!view->revoked)	/* its devices leave the others their room */
		view->buf->nr_attach_revoked += view->nr_attach;
	WRITE_ONCE(view->revoked, true);
	if (!view->inode)
		return;
	if (!inodes) {	/* no room to defer it: zap here, as before */
		unmap_mapping_range(view->inode->i_mapping, 0, 0, 1);
		return;
	}
	ihold(view->inode);
	inodes[(*n)++] = view->inode;
}

/*
 * The zap runs without buf->lock: its cost is one VMA walk per mapping of
 * the views cut, and a holder chooses how many it has (tens of thousands
 * of small mappings, multiplied by fork). Under the lock it stalled every
 * other holder's page fault on the buffer and hallocd's views and INFO of
 * it for as long as the caller liked. No PTE outlives the revoke anyway: a
 * fault inserts one only under buf->lock after seeing the view not
 * revoked, so one inserted before the flag was set is zapped here and none
 * is inserted after; and the ioctl returns only once the zap is done.
 */
int halloc_view_revoke(const struct halloc_revoke_data *data)
{
	struct halloc_view *caller, *view;
	struct halloc_buffer *buf;
	struct dma_buf *dmabuf;
	struct inode **inodes = NULL;
	unsigned int n = 0, cut = 0, i;
	int ret = 0;

	if (data->flags || !data->view_id)
		return -EINVAL;
	dmabuf = dma_buf_get(data->fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (!halloc_dmabuf_is_ours(dmabuf)) {
		ret = -EINVAL;
		goto put;
	}
	caller = dmabuf->priv;
	buf = caller->buf;

	mutex_lock(&buf->lock);
	/* First judge every view of the subtree, then cut: all or nothing. */
	list_for_each_entry(view, &buf->view_list, node) {
		int target = halloc_lineage_pos(view, data->view_id);
		int auth = halloc_lineage_pos(view, caller->id);

		if (target < 0)
			continue;
		/*
		 * The original (the root of every lineage), whether it is
		 * still open or not: close it instead.
		 */
		if (target == 0) {
			ret = -EINVAL;
			goto unlock;
		}
		/* The caller must be the target or one of its ancestors. */
		if (auth < 0 || auth > target) {
			ret = -EPERM;
			goto unlock;
		}
		n++;
	}
	if (!n) {
		ret = -ENOENT;
		goto unlock;
	}
	/*
	 * Judged: it must not fail from here on (hallocd forgets the grant's
	 * views once it asked). Without room for the list, the zap is done
	 * under the lock, as it used to be.
	 */
	/* vmalloc past a few pages: the count is the holders' to grow. */
	inodes = kvmalloc_array(n, sizeof(*inodes), GFP_KERNEL | __GFP_NOWARN);
	list_for_each_entry(view, &buf->view_list, node)
		if (halloc_lineage_pos(view, data->view_id) >= 0)
			halloc_view_cut(view, inodes, &cut);
unlock:
	mutex_unlock(&buf->lock);
	for (i = 0; i < cut; i++) {
		unmap_mapping_range(inodes[i]->i_mapping, 0, 0, 1);
		iput(inodes[i]);
	}
	kvfree(inodes);
put:
	dma_buf_put(dmabuf);
	return ret;
}

/*
 * dma_buf_vmap() of a view that may not reach the pages (revoked, or
 * restricted to devices none of which has attached it: see
 * halloc_dmabuf_vmap): 6.1's core WARNs on an exporter vmap failure, so
 * map one private zeroed page over the whole size instead of the buffer.
 * The core keeps one mapping per dma-buf, so a view has at most one
 * scratch mapping at a time.
 */
int halloc_scratch_vmap(struct halloc_view *view, struct iosys_map *map)
{
	pgoff_t i, nr = view->buf->nr_pages;
	struct page **pages;
	int ret = -ENOMEM;

	lockdep_assert_held(&view->buf->lock);
	if (WARN_ON_ONCE(view->scratch))
		return -EBUSY;
	pages = kvmalloc_array(nr, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	view->scratch = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!view->scratch)
		goto free_array;
	for (i = 0; i < nr; i++)
		pages[i] = view->scratch;
	view->scratch_vaddr = vmap(pages, nr, VM_MAP, PAGE_KERNEL);
	if (!view->scratch_vaddr)
		goto free_scratch;
	iosys_map_set_vaddr(map, view->scratch_vaddr);
	ret = 0;
	goto free_array;

free_scratch:
	__free_page(view->scratch);
	view->scratch = NULL;
free_array:
	kvfree(pages);
	return ret;
}

/* Undo halloc_scratch_vmap() if @map is its mapping; false otherwise. */
bool halloc_scratch_vunmap(struct halloc_view *view, struct iosys_map *map)
{
	lockdep_assert_held(&view->buf->lock);
	if (!view->scratch || map->is_iomem || map->vaddr != view->scratch_vaddr)
		return false;
	vunmap(view->scratch_vaddr);
	__free_page(view->scratch);
	view->scratch = NULL;
	view->scratch_vaddr = NULL;
	return true;
}
