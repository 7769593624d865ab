// SPDX-License-Identifier: GPL-2.0
/*
 * Views: more dma-bufs over an existing halloc buffer, each carrying
 * narrower rights (HALLOC_IOCTL_VIEW), and the accounting query
 * (HALLOC_IOCTL_INFO). See uapi/halloc_heap.h for the contract.
 */
#include <linux/dcache.h>
#include <linux/dma-buf.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "halloc.h"

static bool halloc_str_valid(const char *s, bool may_be_empty)
{
	size_t len = strnlen(s, HALLOC_NAME_LEN);

	return len < HALLOC_NAME_LEN && (may_be_empty || len);
}

static int halloc_view_data_valid(const struct halloc_view_data *data)
{
	u32 i;

	/* Out fields and unused entries are reserved: zero on input. */
	if (data->view_id || (data->num_drivers < HALLOC_MAX_DRIVERS &&
			      memchr_inv(data->drivers[data->num_drivers], 0,
					 (HALLOC_MAX_DRIVERS - data->num_drivers) *
						 HALLOC_NAME_LEN)))
		return -EINVAL;
	if (data->fd || data->fd_flags & ~O_CLOEXEC ||
	    data->cpu_access > HALLOC_CPU_READ_WRITE ||
	    data->flags & ~HALLOC_VIEW_VALID_FLAGS ||
	    data->num_drivers > HALLOC_MAX_DRIVERS ||
	    (data->num_drivers &&
	     !(data->flags & HALLOC_VIEW_RESTRICT_ATTACH)) ||
	    !halloc_str_valid(data->name, true))
		return -EINVAL;
	for (i = 0; i < data->num_drivers; i++)
		if (!halloc_str_valid(data->drivers[i], false))
			return -EINVAL;
	return 0;
}

/* -EPERM unless @data asks for no more than @parent (opened @fmode) has. */
static int halloc_view_narrows(const struct halloc_view *parent,
			       fmode_t fmode,
			       const struct halloc_view_data *data)
{
	u32 parent_cpu = parent->cpu_access;
	u32 i;

	/* The fd's access mode caps it too: a write-only fd cannot be mapped. */
	if (!(fmode & FMODE_READ))
		parent_cpu = HALLOC_CPU_NONE;
	else if (!(fmode & FMODE_WRITE))
		parent_cpu = min_t(u32, parent_cpu, HALLOC_CPU_READ);
	if (data->cpu_access > parent_cpu)
		return -EPERM;
	if (!(parent->flags & HALLOC_VIEW_RESTRICT_ATTACH))
		return 0;
	if (!(data->flags & HALLOC_VIEW_RESTRICT_ATTACH))
		return -EPERM;
	for (i = 0; i < data->num_drivers; i++)
		if (!halloc_view_allows_driver(parent, data->drivers[i]))
			return -EPERM;
	return 0;
}

/* A new view over the buffer behind data->source_fd, with data's rights. */
struct dma_buf *halloc_view_export(const struct halloc_view_data *data)
{
	struct halloc_view *parent, *view;
	struct dma_buf *source, *dmabuf;
	char *name = NULL;
	u32 flags, i;
	int ret;

	ret = halloc_view_data_valid(data);
	if (ret)
		return ERR_PTR(ret);
	source = dma_buf_get(data->source_fd);
	if (IS_ERR(source))
		return source;
	if (!halloc_dmabuf_is_ours(source)) {
		ret = -EINVAL;
		goto put_source;
	}
	parent = source->priv;
	/* Errors in the uapi's order: revoked, then rights, then the shape. */
	ret = -ENODEV;
	if (READ_ONCE(parent->revoked))	/* rechecked under lock at export */
		goto put_source;
	ret = halloc_view_narrows(parent, source->file->f_mode, data);
	if (ret)
		goto put_source;
	ret = -EMLINK;
	if (parent->depth >= HALLOC_MAX_VIEW_DEPTH)
		goto put_source;

	ret = -ENOMEM;
	view = kzalloc(sizeof(*view), GFP_KERNEL_ACCOUNT);
	if (!view)
		goto put_source;
	if (data->name[0]) {
		name = kstrdup(data->name, GFP_KERNEL_ACCOUNT);
		if (!name)
			goto free_view;
	}
	view->cpu_access = data->cpu_access;
	view->flags = data->flags;
	view->is_view = true;
	view->num_drivers = data->num_drivers;
	/* Each name and nothing after its NUL: INFO shows them to holders. */
	for (i = 0; i < data->num_drivers; i++)
		strscpy(view->drivers[i], data->drivers[i], HALLOC_NAME_LEN);
	view->buf = parent->buf;
	kref_get(&view->buf->ref);

	flags = data->fd_flags & O_CLOEXEC;
	flags |= data->cpu_access == HALLOC_CPU_READ_WRITE ? O_RDWR : O_RDONLY;
	dmabuf = halloc_export(view, parent, flags);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto put_buf;
	}
	if (name) {
		/* Nobody else can see the dma-buf yet; lock for form's sake. */
		spin_lock(&dmabuf->name_lock);
		dmabuf->name = name;
		spin_unlock(&dmabuf->name_lock);
	}
	dma_buf_put(source);
	return dmabuf;

put_buf:
	kref_put(&view->buf->ref, halloc_buffer_free);
	kfree(name);
free_view:
	kfree(view);
put_source:
	dma_buf_put(source);
	return ERR_PTR(ret);
}

/* Fill @info (all but info->fd are outputs) for the dma-buf info->fd. */
int halloc_buffer_info(struct halloc_buffer_info *info)
{
	struct halloc_buffer *buf;
	struct halloc_view *view;
	struct dma_buf *dmabuf;
	s32 fd = info->fd;

	dmabuf = dma_buf_get(fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	if (!halloc_dmabuf_is_ours(dmabuf)) {
		dma_buf_put(dmabuf);
		return -EINVAL;
	}
	view = dmabuf->priv;
	buf = view->buf;

	memset(info, 0, sizeof(*info));
	info->fd = fd;
	info->cpu_access = view->cpu_access;
	info->size = buf->size;
	info->id = buf->id;
	info->flags = view->flags;
	if (view->is_view)
		info->flags |= HALLOC_INFO_IS_VIEW;
	if (buf->heap->protected_content)
		info->flags |= HALLOC_INFO_PROTECTED;
	info->view_id = view->id;
	info->num_drivers = view->num_drivers;
	memcpy(info->drivers, view->drivers, sizeof(info->drivers));
	info->mmaps = atomic_read(&buf->mmaps);
	/*
	 * Less dma_buf_get()'s own reference; a dentry's count is its holders.
	 * Read without their locks: a snapshot, as any answer here is.
	 */
	info->file_refs = file_count(dmabuf->file) - 1;
	info->path_refs = READ_ONCE(dmabuf->file->f_path.dentry->d_lockref.count);
	strscpy(info->heap, buf->heap->name, sizeof(info->heap));

	mutex_lock(&buf->lock);
	if (!buf->pages) {
		info->flags |= HALLOC_INFO_NOT_BACKED;
		if (buf->backing)
			info->flags |= HALLOC_INFO_BACKING;
	} else if (buf->below_4g) {
		info->flags |= HALLOC_INFO_BELOW_4G;
	}
	info->segments = buf->pages ? buf->segments : 0;
	info->dmabufs = buf->dmabufs;
	info->views = buf->views;
	info->attachments = buf->nr_attach;
	info->maps = buf->nr_maps;
	info->vmaps = buf->vmap_cnt;
	if (view->revoked)
		info->flags |= HALLOC_INFO_REVOKED;
	mutex_unlock(&buf->lock);

	spin_lock(&dmabuf->name_lock);
	if (dmabuf->name)
		strscpy(info->name, dmabuf->name, sizeof(info->name));
	spin_unlock(&dmabuf->name_lock);

	dma_buf_put(dmabuf);
	return 0;
}
