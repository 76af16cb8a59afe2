// Package fusefs is layerfs's userspace union filesystem: a go-fuse server
// that mounts "lowers + upper + work" as kernel overlayfs does, for callers
// that cannot mount overlayfs. It knows nothing of the layer store.
//
// Semantics (kernel overlayfs is the reference):
//
//   - Lookup goes top-down: upper, then the lowers. A whiteout (0/0 char
//     device, ".wh.NAME" file, or an xattr whiteout in a directory marked
//     overlay.opaque="x") hides the name below; an opaque directory
//     ({trusted,user}.overlay.opaque="y" or a ".wh..wh..opq" file) hides
//     the lowers' contents; a non-directory hides a lower directory.
//     Whiteouts, markers, ".wh." names and the work dir never show.
//   - Readdir merges the layers at opendir into a snapshot; offsets are
//     indexes into it, so telldir/seekdir are stable; rewinddir takes a new
//     snapshot. d_ino equals st_ino.
//   - st_dev is the mount's; st_ino comes from the origin object: (st_dev,
//     st_ino) of the topmost lower object, packed xino-style with a device
//     index (upper first, then lowers) when the layers span devices. A
//     copy-up records it as {trusted,user}.layerfs.origin (decimal), so the
//     number survives copy-up and remounts. Every name of a hardlink group
//     is one node. Merged directories report st_nlink 1, as overlayfs does.
//   - Owners and modes come from user.containers.override_stat where it is
//     present (chmod/chown then rewrite the record), else from disk through
//     Options.UIDMap/GIDMap and the squash options.
//   - Copy-up (first open for write, truncate, chmod, chown, utimens,
//     setxattr, removexattr, link, rename) builds the copy under
//     WORK/layerfs/tmp (data via copy_file_range over the data extents
//     only, so holes stay holes; owner, mode, xattrs, ns times) and renames
//     it into the upper; parents first. A lower object with st_nlink > 1 is
//     copied once into WORK/layerfs/index/<ino> and hard-linked to each
//     name as it is copied up, so all names keep sharing data; the index
//     entry carries {trusted,user}.layerfs.nlink, the union's link count.
//   - Unlink/rmdir of names the lowers hold leave a 0/0 whiteout (a
//     ".wh.NAME" file when mknod is refused); mkdir over a whiteout makes an
//     opaque dir. Metadata xattrs are written in Options.XattrNamespace, so
//     kernel overlayfs can mount the upper later.
//   - Rename of a directory with lower layers writes overlayfs's redirect
//     xattr ("/path/in/lowers") on the moved upper dir instead of EXDEV.
//   - A read-only view (no upper, or ReadOnly) answers EROFS to changes.
//
// Known gaps are listed in /tmp/fusefs-status.md while this is young.
package fusefs
