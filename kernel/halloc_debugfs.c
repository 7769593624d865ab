// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/debug/halloc/buffers: every live halloc buffer, its
 * accounting and its device attachments, then totals and the pool size.
 */
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/dma-mapping.h>
#include <linux/seq_file.h>

#include "halloc.h"

static struct dentry *halloc_debugfs_root;

/*
 * Called under halloc_buffers_lock, which every buffer's creation and free
 * takes: a buffer whose lock is held at that moment (a CPU sync over many
 * attachments, say) is shown without its details rather than waited for,
 * or one user could stall every allocation through a reader of this file.
 */
static void halloc_show_buffer(struct seq_file *s, struct halloc_buffer *buf)
{
	struct halloc_attach *a;
	char segs[12] = "-";

	if (!mutex_trylock(&buf->lock)) {
		seq_printf(s, "%-6llu %-15s %12zu  (busy: details skipped)\n",
			   buf->id, buf->heap->name, buf->size);
		return;
	}
	if (buf->pages)
		snprintf(segs, sizeof(segs), "%u", buf->segments);
	seq_printf(s, "%-6llu %-15s %12zu %5s %5s %5u %5u %6u %5u %5u %5d%s\n",
		   buf->id, buf->heap->name, buf->size, segs,
		   !buf->pages ? "-" : buf->below_4g ? "yes" : "no",
		   buf->dmabufs, buf->views, buf->nr_attach, buf->nr_maps,
		   buf->vmap_cnt, atomic_read(&buf->mmaps),
		   buf->pages ? "" : buf->backing ? "  not backed (backing)" :
						    "  not backed");
	list_for_each_entry(a, &buf->attachments, node)
		seq_printf(s, "       attached: %s (%s) dma_mask=%#llx%s\n",
			   dev_name(a->dev), halloc_dev_driver_name(a->dev),
			   dma_get_mask(a->dev), a->mapped ? " mapped" : "");
	mutex_unlock(&buf->lock);
}

static int halloc_buffers_show(struct seq_file *s, void *unused)
{
	struct halloc_buffer *buf;
	unsigned long count = 0;
	size_t bytes = 0, backed = 0;

	seq_printf(s, "%-6s %-15s %12s %5s %5s %5s %5s %6s %5s %5s %5s\n",
		   "id", "heap", "size", "segs", "<4G", "bufs", "views", "attach",
		   "maps", "vmaps", "mmaps");
	mutex_lock(&halloc_buffers_lock);
	list_for_each_entry(buf, &halloc_buffers, node) {
		halloc_show_buffer(s, buf);
		count++;
		bytes += buf->size;
		if (halloc_buffer_pages(buf))
			backed += buf->size;
	}
	mutex_unlock(&halloc_buffers_lock);
	seq_printf(s, "total: %lu buffers, %zu bytes, %zu backed; pool: %lu pages\n",
		   count, bytes, backed, halloc_pool_pages());
	seq_printf(s, "below 4 GiB: %llu bytes charged (dma32_max_mb)\n",
		   halloc_dma32_charged());
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(halloc_buffers);

void halloc_debugfs_init(void)
{
	halloc_debugfs_root = debugfs_create_dir("halloc", NULL);
	debugfs_create_file("buffers", 0444, halloc_debugfs_root, NULL,
			    &halloc_buffers_fops);
}

void halloc_debugfs_exit(void)
{
	debugfs_remove_recursive(halloc_debugfs_root);
}
