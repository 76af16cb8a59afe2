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
//   - Readdir merges the layers. A position in a directory is a cookie
//     made from the name of the last entry returned (a 63-bit hash, as
//     ext4's hashed directories use) and a listing is served in cookie
//     order, so telldir/seekdir stay valid whatever is added or removed,
//     and a name there throughout a read is returned exactly once.
//     d_type and d_ino are those of stat.
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
//     record names a device, fifo or socket shows as one), for symlinks,
//     FIFOs and sockets (which cannot carry it) from the special-owners
//     tables of Options.LowerOwnerTables and UpperOwnerTable (see
//     ownertable.go), otherwise from disk through Options.UIDMap/GIDMap
//     and the squash options.
//   - Copy-up on the first change of a lower object (open for write,
//     truncate, chmod, chown, utimens, setxattr, removexattr, link,
//     rename): data with copy_file_range over the data extents only
//     (SEEK_DATA/SEEK_HOLE: holes stay holes), owner, mode, xattrs
//     (security.capability and ACLs included; overlay bookkeeping not),
//     times to the nanosecond. The data is synced (fdatasync) before the
//     copy is renamed into place, as overlayfs syncs its copy-ups, so a
//     power loss leaves the lower object or the whole copy, never an
//     empty one (not with Volatile). Parents are copied up first, each
//     with its own metadata. A write never reaches a lower inode. A lower hardlink
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
//   - New objects get the caller's umask, or, in a directory with a
//     default POSIX ACL, that ACL (see POSIX ACLs below).
//   - Permissions: root of the initial user namespace, and any mount with
//     AllowOther, get default_permissions: the kernel checks every access
//     against the owners and modes the view shows. Anyone else's view is
//     theirs alone (FUSE lets no other uid in) and the daemon's own rights
//     on the layer directories decide what they may do, so a plain user
//     changes a view of a root-owned image throughout; access(2) answers
//     the same way (permissions.go). A read-only view (no Upper and Work,
//     or ReadOnly) answers EROFS.
//   - A file capability a rootless store kept in
//     user.containers.override_security.capability shows as
//     security.capability (capability.go).
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
//   - Options.UpperOwnerTable (package ownertable's format) holds the
//     owners and modes of the upper's symlinks, FIFOs and sockets that
//     copy-up carried or a chown the daemon could not make recorded; a
//     line is appended per change, and the file is rewritten compact now
//     and then.
//   - Work/layerfs/tmp holds copy-ups being built (a crash leaves only
//     files there, removed at the next mount); every copy-up is renamed or
//     linked into place, so the upper shows either the lower object or
//     the complete copy.
//   - A lower hardlink group (st_nlink > 1) is copied up as upper
//     hardlinks: every name of the group that the view shows is linked in
//     the upper to one copy, so the upper alone describes the view and
//     kernel overlayfs (without an index) and `layerfs commit` read the
//     new data and the same inode under every name. The names are found
//     with one walk per lower layer (kept per mount: inode -> paths,
//     multiply-linked files only, at most 131072 names), at their lower
//     paths and under directories renamed by any mount or by the kernel
//     (the upper's overlay.redirect xattrs, read once per mount and again
//     after a directory moves).
//   - Only where that cannot be the whole group (names in other layers,
//     as with lowers that hardlink their parent's files; a layer too big
//     to walk) the copy lives in
//     Work/layerfs/index/<st_ino as 16 hex digits>, overlayfs's index=on:
//     the names found are linked to it, other names are linked as changes
//     come through them, and the entry carries NS.layerfs.nlink, the
//     group's link count in the view. With trusted.* xattrs the copy is
//     also the kernel's index entry (kernelindex.go): linked as
//     Work/index/<hex of the lower's overlayfs file handle>, with
//     trusted.overlay.origin (that handle) and trusted.overlay.nlink
//     (kept in step with NS.layerfs.nlink), so kernel overlayfs with
//     index=on serves the names not linked yet from it.
//
// # What the union reads
//
// Besides every whiteout and opaque format and both redirect forms, the
// union reads what kernel overlayfs with index=on leaves in an upper
// (kernelindex.go): a lower hardlink group the kernel copied up lives in
// Work/index/<hex of the lower's file handle>, and only the name the
// change came through is in the upper. Before serving, Mount decodes each
// such entry (open_by_handle_at: root only, as is index=on itself), links
// every name of the group it finds into the upper (also under directories
// the kernel renamed) and the entry into the union's own index with
// NS.layerfs.origin (the lower's inode number, which the kernel shows too)
// and NS.layerfs.nlink from the kernel's overlay.nlink, which it rewrites
// to count the links added, so the kernel reads the upper right again.
// AdoptKernelIndex does the same without mounting, for a commit;
// KernelIndexNames reads the same without writing anything, for a commit
// of a view the kernel has mounted right now. The kernel's overlay.origin
// on a non-directory it copied up (not a hardlink) is decoded too, so the
// union shows the lower's inode number for it, as the kernel does (root
// only: decoding needs CAP_DAC_READ_SEARCH).
//
// # POSIX ACLs
//
// Where the kernel checks permissions (default_permissions, above) and
// xattrs show, the union negotiates FUSE_POSIX_ACL: the kernel reads
// system.posix_acl_access and _default through getxattr and applies them
// in every permission check, as it does for overlayfs's upper. Creating an
// object then is the union's job, as it is a local file system's: with
// FUSE_DONT_MASK the kernel sends the caller's umask instead of applying
// it, and the union gives the new object the parent's default ACL masked
// by the mode it was created with (and, for a directory, the default ACL
// itself), or the umask where the parent has none, as posix_acl_create
// does (acl.go). Copy-up copies ACLs with the other xattrs; chmod updates
// an ACL's mask (the upper's file system does, the mode being set there).
// Without default_permissions (a plain user's mount without AllowOther)
// ACLs are stored and copied but not enforced, as no mode is.
//
// # Memory
//
// The kernel keeps a node for every name it caches, so a stat walk of a
// million files makes a million nodes. The union serves the kernel itself
// (bridge.go, on go-fuse's wire-level server) rather than through
// go-fuse's fs package, whose bookkeeping took about 300 bytes a node: a
// node is 80 bytes (state only directories, hardlinked, open or indexed
// objects need lives in a side struct made on demand, and a node's lower
// path is its parent's plus its name unless recorded), its name, and one
// entry in a map from node ID to node; the node ID is the view inode
// number, so no second map finds a node by inode and no directory keeps a
// map of its children (tree.go). About 140 bytes a node in all. Nothing
// of the union keeps a node the kernel forgot, so memory follows what the
// kernel caches and falls when memory pressure makes the kernel forget.
// A directory's name index (below) is one sorted string with offsets and
// a layer bitmask per name (about 13 bytes and the name); all of a
// mount's indexes share 3 MiB and the least recently used go past it.
// Listings are packed the same way (about 21 bytes and the name) and
// share 4 MiB. The kernel keeps its own copy of a listing it read, but in
// page cache, which reclaim takes back (on a shared host within a minute,
// with gigabytes free): the union's copy then answers, rather than every
// layer being read again. Daemons run the garbage collector at GOGC=25
// (TuneGC): their heap is mostly that node state, which the default 100
// would let double before collecting.
//
// # Speed
//
// Lower-only objects get Options.LowerTimeout entry and attribute
// timeouts (they cannot change except through this mount, which tells the
// kernel), and lower files keep their page cache across opens
// (keep_cache). Directories are never opened (OPENDIR answers ENOSYS), so
// opendir and closedir cost no round trip and the kernel caches every
// directory's listing until it changes or is reclaimed. READDIRPLUS
// answers with every entry's attributes in directories of up to 8192
// names, so ls -l, find, du or tar make no LOOKUP per name
// (READDIRPLUS_AUTO would give them for the first few dozen names only);
// a bigger directory is listed without them, as ls of a huge directory
// only wants names. The first stat or copy-up of a multiply-linked lower
// file walks its layer once (see above). A readdir indexes each lower directory's names so the
// lookups that follow skip one stat per layer; a lookup reads no whole
// directory except a small one spread over three or more lower layers.
// Whether a lower object has xattrs at all is remembered, so the kernel's
// security.* probes of one that has none, and the GETATTR that follows
// every read (the kernel refreshes atime), cost no getxattr; a file made
// through the view answers the security.capability probe before each
// write without a syscall. A create or mkdir where no whiteout sits and
// the caller's IDs are the daemon's (root's own files; a rootless
// mounter's) goes straight into the upper dir, as overlayfs's does
// (createdirect.go); the others are built in the work dir and renamed.
// Handles are FOPEN_NOFLUSH (close(2) sends no FLUSH: it would do nothing
// on a local upper), and reads under 64 KiB are a pread rather than a
// splice through a pipe. Upper files, and lower files opened read-only,
// use FUSE passthrough where the kernel (6.9+) and privileges allow it
// (root; inside a user namespace the kernel refuses and reads go through
// the daemon), so the kernel reads and writes them itself; with Debug,
// every open logs which path it took. The kernel cannot point an inode
// that reads its lower file at the copy-up: an open that needs the copy
// while such a read-only open lasts retires the node (its names go to a
// new node, the kernel is told to forget them) and answers ESTALE, on
// which the kernel looks the path up again and opens the object's new
// node (file.go, node.retire). A read-only descriptor read through the
// daemon switches to the copy when one is made, as overlayfs's do. Requests are
// served in parallel: state is per node, under per-node locks. Paths come
// from the tree, so a rename of a directory runs alone: every other
// request that computes paths holds a shared lock meanwhile (moves.go).
// The daemons run with more Ps than go-fuse has readers (TuneScheduler),
// so readers blocked in read(2) keep theirs and Go's sysmon stays quiet.
//
// # Known limits
//
//   - A rename of a directory waits for the requests in flight that
//     compute paths, and the requests that come meanwhile wait for it:
//     behind a copy-up of a big file (an open for write of a lower file)
//     a directory rename, and everything after it, waits for the copy.
//     Kernel overlayfs holds only the directories involved;
//     fuse-overlayfs, threaded, holds one lock for every request.
//   - An rmdir of an upper directory that hides lower entries removes
//     its whiteouts before it puts a whiteout in its place; should that
//     last step fail, the directory stays, with the lower entries shown.
//   - Names of a lower hardlink group that the union copies up through
//     its index (see "What the union writes": names in other layers)
//     and that were never changed, linked or renamed through the union
//     are not linked into the upper: the union finds the new data through
//     its index, and kernel overlayfs mounting the upper later through
//     the kernel's entry the union writes beside it (trusted.* only), but
//     a commit, which reads the upper, does not. For such groups the
//     upper's st_nlink also counts the index links.
//   - Named users and groups in ACLs are stored as the kernel sends them:
//     UIDMap/GIDMap do not translate them. Under an override_stat record
//     chmod rewrites the record, not the mode, so an ACL's mask stays.
//   - A descriptor opened read-only on a lower file before the file was
//     copied up, whose reads the kernel makes itself (FUSE passthrough:
//     root, Linux >= 6.9), reads the lower file until it is closed, as
//     with fuse-overlayfs and overlayfs before Linux 4.19; every open
//     made after the copy-up reads the copy. Without passthrough (as a
//     plain user, or with NoPassthrough), such a descriptor switches to
//     the copy, as overlayfs's do.
//   - Uppers written by overlayfs with metacopy=on (data left in a lower)
//     are not read, nor its index dir in a read-only view, nor index
//     entries of directories (nfs_export=on); its whiteouts, opaque dirs,
//     redirects and hardlink index are.
//   - The kernel does not read the union's own index: a group the union
//     copied up through it (see above) shows the lower's data under its
//     unlinked names when the kernel mounts the upper next, unless the
//     union could write the kernel's entry too (trusted.* xattrs, lower
//     file handles). A group the union copied up by linking every name
//     shows the upper's inode number under the kernel (it trusts an
//     origin's number only for an indexed group or a lone lower name).
//   - st_nlink of a lower object counts every name outside its own layer
//     (a materialized chain's parent layers) as visible.
package fusefs
