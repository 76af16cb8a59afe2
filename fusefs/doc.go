// Package fusefs is layerfs's userspace union filesystem: a go-fuse server
// that mounts "lowers + upper + work" as kernel overlayfs does, for callers
// that cannot mount overlayfs (rootless, nested, sandboxes). It knows
// nothing of the layer store: it is given directories.
//
//	srv, err := fusefs.Mount("/mnt/view", fusefs.Options{
//		Lowers: []string{"/layers/top", "/layers/base"}, // top first
//		Upper:  "/views/1/upper", Work: "/views/1/work",
//		XattrNamespace: whiteout.User, // rootless: what overlayfs -o userxattr reads
//	})
//	...
//	srv.Unmount() // or umount / fusermount3 -u; srv.Wait() returns then
//
// # Semantics (kernel overlayfs is the reference)
//
//   - Lookup goes top-down: upper, then the lowers. A whiteout (0/0 char
//     device, ".wh.NAME" file, or an xattr whiteout in a directory marked
//     overlay.opaque="x") hides the name below; an opaque directory
//     ({trusted,user}.overlay.opaque="y" or a ".wh..wh..opq" file) hides
//     the lowers' contents; a non-directory hides a lower directory.
//     Whiteouts, markers, ".wh." names and the work dir never show, in
//     lookup and in readdir alike (kernel overlayfs lists the whiteouts of a
//     lower dir that exists in one layer only; the union does not). Names
//     starting with ".wh." cannot be created (EINVAL): they would read back
//     as whiteouts.
//   - Readdir merges the layers into a snapshot at opendir; offsets are
//     indexes into it, so telldir/seekdir stay valid whatever changes;
//     rewinddir takes a new snapshot. d_type and d_ino are those of stat.
//   - One st_dev. st_ino comes from the origin object: (st_dev, st_ino) of
//     the topmost lower object, packed xino-style with a device index
//     (upper first, then the lowers, in order) when the layers span several
//     filesystems, so numbers are stable across remounts of the same view.
//     Every name of a hardlink group (within a layer, or lowers
//     materialized as hardlinks of their parent's files) is one node with
//     one st_ino. st_nlink counts the names the view shows, from the first
//     stat: the lower's count minus the names of its layer that the view
//     hides (whiteouts, in the upper or in higher layers, and shadowing),
//     then, once copied up, the upper's count (names added by link(),
//     less those unlinked). The union's index link is never counted.
//     Merged directories report st_nlink 1, as overlayfs does.
//   - Owners and modes come from user.containers.override_stat where it is
//     present (chmod/chown then rewrite the record; an empty file whose
//     record names a device, fifo or socket shows as one), otherwise from
//     disk through Options.UIDMap/GIDMap and the squash options.
//   - Copy-up on the first change of a lower object (open for write,
//     truncate, chmod, chown, utimens, setxattr, removexattr, link,
//     rename): data with copy_file_range over the data extents only
//     (SEEK_DATA/SEEK_HOLE: holes stay holes), owner, mode, xattrs
//     (security.capability and ACLs included; overlay bookkeeping not),
//     times to the nanosecond. Parents are copied up first, each with its
//     own metadata. A write never reaches a lower inode. A lower hardlink
//     group is copied once and every name of its layer under which the
//     view shows that object is linked to the copy (their directories
//     copied up too), so the group stays one inode.
//   - Unlink/rmdir of names the lowers hold leave a 0/0 whiteout; mkdir
//     over a whiteout makes an opaque directory; create over a whiteout
//     replaces it atomically.
//   - Rename works for files and directories, RENAME_NOREPLACE and
//     RENAME_EXCHANGE included, and POSIX rename over an (empty) directory.
//     Renaming a directory that has lower layers works (kernel overlayfs
//     without redirect_dir answers EXDEV): see "What the union writes".
//   - Permissions are checked by the kernel (default_permissions). A
//     read-only view (no Upper and Work, or ReadOnly) answers EROFS.
//
// # What the union writes
//
// The upper is one kernel overlayfs can mount afterwards (with
// redirect_dir=on, and -o userxattr when XattrNamespace is User):
//
//   - Whiteouts are 0/0 character devices (a ".wh.NAME" file only where
//     mknod is refused). Opaque directories carry NS.overlay.opaque="y".
//     NS is Options.XattrNamespace ("trusted" or "user"); when trusted.*
//     is refused the union falls back to user.*, then to ".wh..wh..opq".
//   - A renamed directory that has lower layers gets
//     NS.overlay.redirect="/its/path/in/the/lowers" (overlayfs's absolute
//     redirect format) and the old name a whiteout: O(1), no subtree copy.
//     An upper-only directory moved onto a name the lowers hold is made
//     opaque. Both absolute and relative (kernel-written) redirects are
//     read.
//   - Every copied-up object carries NS.layerfs.origin = its view st_ino
//     (decimal), so st_ino survives copy-up and remounts (symlinks only
//     where the namespace allows xattrs on them, i.e. trusted).
//   - Work/layerfs/tmp holds copy-ups being built (a crash leaves only
//     files there, removed at the next mount); every copy-up is renamed or
//     linked into place, so the upper shows either the lower object or
//     the complete copy.
//   - A lower hardlink group (st_nlink > 1) is copied up as upper
//     hardlinks: every name of the group that the view shows is linked in
//     the upper to one copy, so the upper alone describes the view and
//     kernel overlayfs (without an index) and `layerfs commit` read the
//     new data, the same inode and the right st_nlink under every name.
//     The names are found with one walk per lower layer (kept per mount:
//     inode -> paths, multiply-linked files only, at most 131072 names).
//   - Only where that cannot be the whole group (names in other layers,
//     as with lowers that hardlink their parent's files; a renamed
//     directory in the view, whose lower paths no longer lead to its
//     names; a layer too big to walk) the copy lives in
//     Work/layerfs/index/<st_ino as 16 hex digits>, overlayfs's index=on:
//     the names found are linked to it, other names are linked as changes
//     come through them, and the entry carries NS.layerfs.nlink, the
//     group's link count in the view.
//
// # Speed
//
// Lower-only objects get Options.LowerTimeout entry and attribute
// timeouts (they cannot change except through this mount, which tells the
// kernel), lower files keep their page cache across opens (keep_cache),
// lower-only directories their readdir cache. The first stat or copy-up
// of a multiply-linked lower file walks its layer once (see above). A readdir remembers each
// lower directory's names so the lookups that follow (ls -l, find) skip
// one stat per layer. The xattr names of lower objects are cached, so the
// kernel's security.* probes cost no syscall. Upper files use FUSE
// passthrough where the kernel (6.9+) and privileges allow it (root;
// inside a user namespace the kernel refuses and reads go through the
// daemon); with Debug, every open logs which path it took. Requests are
// served in parallel: state is per node, under per-node locks.
//
// # Known limits
//
//   - Names of a lower hardlink group that the union copies up through
//     its index (see "What the union writes": names in other layers,
//     names under a renamed directory) and that were never changed,
//     linked or renamed through the union are not linked into the upper:
//     the union finds the new data through its index, kernel overlayfs
//     mounting the upper later (and a commit) does not. For such groups the
//     upper's st_nlink also counts the index link. A renamed directory
//     recorded by an earlier mount is only known once this mount has
//     looked it up: a copy-up before that links the group's lower paths
//     only, and the names under that directory keep the lower data.
//   - POSIX ACLs are copied but not enforced by the kernel through the view
//     (FUSE_POSIX_ACL is not negotiated: it would make the union apply
//     umask and default ACLs itself).
//   - Uppers written by overlayfs with metacopy=on (data left in a lower)
//     and overlayfs's own index dir are not read; its whiteouts, opaque
//     dirs and redirects are.
//   - st_nlink of a lower object counts every name outside its own layer
//     (a materialized chain's parent layers) as visible, and a name
//     reachable only under a renamed directory as hidden.
package fusefs
