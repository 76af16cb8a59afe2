package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/testutil"
)

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// chainID is computed here independently of the store's code.
func chainID(parent, diffID string) string {
	if parent == "" {
		return diffID
	}
	return sha256hex([]byte(parent + " " + diffID))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// layerEntries reads an exported layer: every entry's header and data by
// name ("./" trimmed). A stream that does not parse fails t.
func layerEntries(t *testing.T, stream string) (hdrs map[string]*tar.Header, data map[string]string) {
	t.Helper()
	hdrs, data = map[string]*tar.Header{}, map[string]string{}
	tr := tar.NewReader(strings.NewReader(stream))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data
		}
		if err != nil {
			t.Fatalf("read the exported layer: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s of the exported layer: %v", h.Name, err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		hdrs[name], data[name] = h, string(b)
	}
}

func gnuTar(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	testutil.NeedTool(t, "tar")
	cmd := exec.Command("tar", append(append([]string{"-C", dir, "-cf", "-", "--numeric-owner"}, args...), ".")...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tar %v: %v: %s", args, err, errb.String())
	}
	return out
}

func compressed(t *testing.T, data []byte, f compression.Format) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := compression.Compress(&buf, f)
	must(t, err)
	_, err = w.Write(data)
	must(t, err)
	must(t, w.Close())
	return buf.Bytes()
}

// variedLayers builds four layer tars the way real tools make them: GNU
// tar in gnu, pax (with sparse files and xattrs) and ustar formats, and Go's
// writer for OCI whiteouts, covering hardlinks, long names, odd owners and
// modes.
func variedLayers(t *testing.T) [][]byte {
	testutil.NeedRootOnly(t, "builds its layers with GNU tar from a tree holding a device node, files of other owners, trusted.* and security.capability xattrs (TestOwnershipAndDevicesKept covers these rootless)")
	base := t.TempDir()

	l1 := filepath.Join(base, "l1")
	must(t, os.MkdirAll(filepath.Join(l1, "etc/conf.d"), 0o755))
	must(t, os.MkdirAll(filepath.Join(l1, "usr/bin"), 0o755))
	must(t, os.MkdirAll(filepath.Join(l1, "var/lib/app"), 0o750))
	must(t, os.WriteFile(filepath.Join(l1, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(l1, "etc/conf.d/a"), []byte("a=1\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(l1, "usr/bin/su"), bytes.Repeat([]byte{0x7f}, 3000), 0o755))
	must(t, unix.Chmod(filepath.Join(l1, "usr/bin/su"), 0o4755))
	must(t, os.Link(filepath.Join(l1, "usr/bin/su"), filepath.Join(l1, "usr/bin/su-hardlink")))
	must(t, os.Symlink("../etc/passwd", filepath.Join(l1, "usr/passwd-link")))
	must(t, os.Lchown(filepath.Join(l1, "var/lib/app"), 1000, 1000))
	must(t, os.WriteFile(filepath.Join(l1, "var/lib/app/data"), []byte("owned\n"), 0o640))
	must(t, os.Lchown(filepath.Join(l1, "var/lib/app/data"), 65534, 4242))
	long := filepath.Join(l1, strings.Repeat("deep-directory-name/", 8))
	must(t, os.MkdirAll(long, 0o755))
	must(t, os.WriteFile(filepath.Join(long, strings.Repeat("x", 120)), []byte("long"), 0o644))
	must(t, unix.Mkfifo(filepath.Join(l1, "var/lib/app/fifo"), 0o600))
	must(t, unix.Mknod(filepath.Join(l1, "usr/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, unix.Chmod(filepath.Join(l1, "var"), 0o1777))

	l2 := filepath.Join(base, "l2")
	must(t, os.MkdirAll(filepath.Join(l2, "usr/bin"), 0o755))
	must(t, os.MkdirAll(filepath.Join(l2, "data"), 0o755))
	f, err := os.Create(filepath.Join(l2, "data/sparse.img"))
	must(t, err)
	_, err = f.WriteAt([]byte("header"), 0)
	must(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte("middle"), 2000), 64<<20)
	must(t, err)
	must(t, f.Truncate(200<<20))
	must(t, f.Close())
	must(t, os.WriteFile(filepath.Join(l2, "usr/bin/ping"), []byte("#!/bin/sh\n"), 0o755))
	must(t, unix.Setxattr(filepath.Join(l2, "usr/bin/ping"), "security.capability",
		[]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	must(t, unix.Setxattr(filepath.Join(l2, "data"), "user.comment", []byte("xattr on a dir"), 0))
	must(t, unix.Setxattr(filepath.Join(l2, "data/sparse.img"), "trusted.note", []byte("trusted too"), 0))
	// PAX keeps nanoseconds (gnu and ustar keep seconds only).
	pastNs := time.Date(2020, 2, 29, 13, 14, 15, 987654321, time.UTC)
	must(t, os.Chtimes(filepath.Join(l2, "usr/bin/ping"), pastNs, pastNs))

	l3 := filepath.Join(base, "l3")
	must(t, os.MkdirAll(filepath.Join(l3, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(l3, "etc/passwd"), []byte("root:x:0:0::/root:/bin/bash\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(l3, "etc/motd"), []byte("ustar layer\n"), 0o444))
	must(t, os.Lchown(filepath.Join(l3, "etc/motd"), 7, 8))

	// Layer 4: OCI whiteouts and an opaque dir, from Go's writer (PAX).
	var l4 bytes.Buffer
	tw := tar.NewWriter(&l4)
	mt := time.Date(2023, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt},
		{Name: "etc/.wh.motd", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt},
		{Name: "etc/conf.d/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt},
		{Name: "etc/conf.d/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt},
		{Name: "etc/conf.d/b", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4, ModTime: mt, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.k": "v"}},
	} {
		must(t, tw.WriteHeader(h))
		if h.Size > 0 {
			tw.Write([]byte("b=2\n"))
		}
	}
	must(t, tw.Close())

	return [][]byte{
		gnuTar(t, l1, "--format=gnu"),
		gnuTar(t, l2, "--format=posix", "--sparse", "--xattrs", "--xattrs-include=*"),
		gnuTar(t, l3, "--format=ustar"),
		l4.Bytes(),
	}
}

func TestImportChainOfVariedTarsExportsBitForBit(t *testing.T) {
	layers := variedLayers(t)
	s := newStore(t)
	formats := []compression.Format{compression.None, compression.Gzip, compression.Zstd, compression.Gzip}
	var parent string
	var ids []string
	for i, raw := range layers {
		input := compressed(t, raw, formats[i])
		args := []string{"import"}
		if parent != "" {
			args = append(args, "--parent", parent[7:19]) // a prefix, as users type it
		}
		args = append(args, "-")
		id := s.ok(input, args...).lastLine()
		want := chainID(parent, sha256hex(raw))
		if id != want {
			t.Fatalf("layer %d: chain ID %s, want %s", i+1, id, want)
		}
		ids = append(ids, id)
		parent = id
	}
	for i, id := range ids {
		out := s.ok(nil, "export", id).stdout
		if sha256hex([]byte(out)) != sha256hex(layers[i]) {
			t.Fatalf("layer %d: export is not the imported tar (%d vs %d bytes)", i+1, len(out), len(layers[i]))
		}
		// Compressed output decompresses to the same tar.
		file := filepath.Join(t.TempDir(), "out.tar.zst")
		s.ok(nil, "export", id[7:20], "-o", file, "--compress", "zstd")
		data, err := os.ReadFile(file)
		must(t, err)
		r, f, err := compression.Decompress(bytes.NewReader(data))
		must(t, err)
		plain, err := io.ReadAll(r)
		must(t, err)
		if f != compression.Zstd || !bytes.Equal(plain, layers[i]) {
			t.Fatalf("layer %d: --compress zstd gave %s and %d bytes", i+1, f, len(plain))
		}
	}
	// What the layers hold on disk: spot checks of the overlay-native form.
	var info struct {
		Path string `json:"path"`
	}
	must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", ids[3]).stdout), &info))
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(info.Path, "etc/motd"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("etc/.wh.motd did not become a 0/0 whiteout: mode %o rdev %d", st.Mode, st.Rdev)
	}
	if v, err := getxattr(filepath.Join(info.Path, "etc/conf.d"), "trusted.overlay.opaque"); err != nil || v != "y" {
		t.Fatalf("opaque dir not marked: %q %v", v, err)
	}
	must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", ids[1]).stdout), &info))
	must(t, unix.Stat(filepath.Join(info.Path, "data/sparse.img"), &st))
	if st.Blocks*512 > 10<<20 {
		t.Fatalf("sparse file takes %d bytes on disk: holes were filled", st.Blocks*512)
	}
	if v, err := getxattr(filepath.Join(info.Path, "usr/bin/ping"), "security.capability"); err != nil || len(v) != 20 {
		t.Fatalf("security.capability lost: %q %v", v, err)
	}
	must(t, unix.Lstat(filepath.Join(info.Path, "usr/bin/ping"), &st))
	if st.Mtim.Nsec != 987654321 {
		t.Fatalf("mtime nanoseconds %d lost", st.Mtim.Nsec)
	}
	must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", ids[0]).stdout), &info))
	must(t, unix.Lstat(filepath.Join(info.Path, "usr/bin/su"), &st))
	if st.Mode&0o7777 != 0o4755 || st.Nlink != 2 {
		t.Fatalf("usr/bin/su: mode %o nlink %d, want 4755 and 2", st.Mode&0o7777, st.Nlink)
	}
	must(t, unix.Lstat(filepath.Join(info.Path, "var/lib/app/data"), &st))
	if st.Uid != 65534 || st.Gid != 4242 {
		t.Fatalf("owner %d:%d, want 65534:4242", st.Uid, st.Gid)
	}
	s.ok(nil, "check")
	tree := s.ok(nil, "tree").stdout
	if !strings.Contains(tree, ids[3]+" *") || strings.Contains(tree, ids[0]+" *") {
		t.Fatalf("tree does not mark the head:\n%s", tree)
	}
}

func getxattr(path, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func TestPrefixesInspectAndRmRefusals(t *testing.T) {
	s := newStore(t)
	base := s.ok(gnuTar(t, treeWith(t, map[string]string{"a": "1"})), "import", "-").lastLine()
	child := s.ok(gnuTar(t, treeWith(t, map[string]string{"b": "2"})), "import", "--parent", base, "-").lastLine()
	var rec map[string]any
	must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", child[7:15]).stdout), &rec))
	for _, k := range []string{"chainID", "diffID", "parent", "size", "created"} {
		if _, ok := rec[k]; !ok {
			t.Fatalf("inspect lacks %q: %v", k, rec)
		}
	}
	if rec["parent"] != base || rec["chainID"] != child {
		t.Fatalf("inspect: %v", rec)
	}
	s.fails(nil, []string{"rm", base}, "in use", child)
	s.fails(nil, []string{"inspect", "ffffffffffff"}, "not found")
	s.fails(nil, []string{"import", "--parent", "0000000000", "-"}, "parent")
	var layers []map[string]any
	must(t, json.Unmarshal([]byte(s.ok(nil, "layers", "--json").stdout), &layers))
	if len(layers) != 2 {
		t.Fatalf("layers --json: %d layers", len(layers))
	}
	s.ok(nil, "rm", child)
	s.ok(nil, "rm", base[7:20])
	s.assertLayers(0)
}

// treeWith makes a directory with the given files.
func treeWith(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(content), 0o644))
	}
	return dir
}

func hostileTar(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		must(t, tw.WriteHeader(h))
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	must(t, tw.Close())
	return buf.Bytes()
}

func TestHostileAndBrokenTarsLeaveStoreUnchanged(t *testing.T) {
	reg := func(name string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 3}
	}
	good := hostileTar(t, reg("ok"), reg("big"))
	for _, tc := range []struct {
		name  string
		input []byte
		want  []string
	}{
		{"dotdot", hostileTar(t, reg("a/../../escape")), []string{"escape"}},
		{"absolute", hostileTar(t, reg("/etc/escape")), []string{"/etc/escape"}},
		{"through symlink", hostileTar(t,
			&tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc", Mode: 0o777},
			reg("link/escape")), []string{"link/escape"}},
		{"hardlink outside", hostileTar(t,
			&tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd", Mode: 0o644}), []string{"h"}},
		{"duplicate", hostileTar(t, reg("dup"), reg("dup")), []string{"dup"}},
		{"truncated", good[:700], []string{"truncated"}},
		{"truncated in data", good[:513], []string{"ok", "EOF"}},
		{"corrupt gzip", append([]byte{0x1f, 0x8b, 8, 0}, bytes.Repeat([]byte{0xAA}, 64)...), []string{"gzip"}},
		{"not a tar", bytes.Repeat([]byte("plain text "), 100), []string{"import"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			outside := filepath.Join(filepath.Dir(s.root), "escape")
			s.fails(tc.input, []string{"import", "-"}, tc.want...)
			s.assertLayers(0)
			if _, err := os.Lstat(outside); err == nil {
				t.Fatalf("the tar wrote %s outside the store", outside)
			}
			s.ok(nil, "check")
		})
	}
}

func TestKill9DuringImportThenReopen(t *testing.T) {
	s := newStore(t)
	s.ok(nil, "layers") // create the store
	big := gnuTar(t, treeWith(t, map[string]string{"big": strings.Repeat("0123456789", 4<<20)}))
	cmd := exec.Command(binPath, "--store", s.root, "import", "-")
	stdin, err := cmd.StdinPipe()
	must(t, err)
	must(t, cmd.Start())
	// Feed part of the tar, wait for the staging dir, then kill -9.
	if _, err := stdin.Write(big[:len(big)/2]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(s.root, "tmp"))
		if len(ents) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("import never staged anything")
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()
	stdin.Close()
	if ents, _ := os.ReadDir(filepath.Join(s.root, "tmp")); len(ents) == 0 {
		t.Fatal("the killed import left no staging dir: the test proves nothing")
	}
	// Any command reopens the store and cleans up.
	if out := s.ok(nil, "layers", "--json").stdout; strings.TrimSpace(out) != "[]" {
		t.Fatalf("layers after kill -9: %s", out)
	}
	s.assertLayers(0)
	s.ok(nil, "check")
	id := s.ok(big, "import", "-").lastLine()
	if id != sha256hex(big) {
		t.Fatalf("re-import gave %s", id)
	}
}

func TestConcurrentImportOfOneLayerByTwoProcesses(t *testing.T) {
	s := newStore(t)
	data := gnuTar(t, treeWith(t, map[string]string{"f": strings.Repeat("z", 8<<20), "g": "small"}))
	file := filepath.Join(t.TempDir(), "layer.tar")
	must(t, os.WriteFile(file, data, 0o644))
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := 0; i < 3; i++ {
		cmd := exec.Command(binPath, "--store", s.root, "import", file)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		must(t, cmd.Start())
		cmds = append(cmds, cmd)
		outs = append(outs, &out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("import %d: %v: %s", i, err, outs[i])
		}
		if !strings.Contains(outs[i].String(), sha256hex(data)) {
			t.Fatalf("import %d printed %q", i, outs[i])
		}
	}
	s.assertLayers(1)
	s.ok(nil, "check")
}

func TestCheckFindsLayerChangedBehindTheStoresBack(t *testing.T) {
	s := newStore(t)
	id := s.ok(gnuTar(t, treeWith(t, map[string]string{"etc/conf": "original"})), "import", "-").lastLine()
	var info struct {
		Path string `json:"path"`
	}
	must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", id).stdout), &info))
	must(t, os.WriteFile(filepath.Join(info.Path, "etc/conf"), []byte("tampered"), 0o644))
	r := s.run(nil, "check")
	if r.err == nil || !strings.Contains(r.stdout, id) {
		t.Fatalf("check did not report %s: %v\n%s%s", id, r.err, r.stdout, r.stderr)
	}
	s.fails(nil, []string{"export", id, "-o", filepath.Join(t.TempDir(), "x.tar")}, "etc/conf")
}

// umociImage builds a two-layer image with umoci, the way image tools do.
func umociImage(t *testing.T) (layout string) {
	t.Helper()
	testutil.NeedRootOrRootlessPass(t)
	testutil.NeedTool(t, "umoci")
	dir := t.TempDir()
	layout = filepath.Join(dir, "layout")
	bundle := filepath.Join(dir, "bundle")
	rootless := os.Geteuid() != 0
	umoci := func(args ...string) {
		t.Helper()
		if rootless && args[0] == "unpack" {
			args = append([]string{args[0], "--rootless"}, args[1:]...)
		}
		out, err := exec.Command("umoci", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("umoci %v: %v: %s", args, err, out)
		}
	}
	umoci("init", "--layout", layout)
	umoci("new", "--image", layout+":v1")
	umoci("unpack", "--image", layout+":v1", bundle)
	rootfs := filepath.Join(bundle, "rootfs")
	must(t, os.MkdirAll(filepath.Join(rootfs, "etc/app"), 0o755))
	must(t, os.WriteFile(filepath.Join(rootfs, "etc/app/config"), []byte("v=1\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(rootfs, "etc/app/old"), []byte("old\n"), 0o644))
	must(t, os.Symlink("app/config", filepath.Join(rootfs, "etc/config")))
	umoci("repack", "--refresh-bundle", "--image", layout+":v1", bundle)
	must(t, os.Remove(filepath.Join(rootfs, "etc/app/old")))
	must(t, os.WriteFile(filepath.Join(rootfs, "etc/app/config"), []byte("v=2\n"), 0o600))
	if !rootless {
		must(t, os.Lchown(filepath.Join(rootfs, "etc/app/config"), 1000, 1000))
	}
	umoci("repack", "--image", layout+":v1", bundle)
	return layout
}

func TestRealImagesFromUmociAndSkopeo(t *testing.T) {
	layout := umociImage(t)
	testutil.NeedTool(t, "skopeo")
	dir := t.TempDir()
	ociArchive := filepath.Join(dir, "image.oci.tar")
	dockerArchive := filepath.Join(dir, "image.docker.tar")
	for _, dst := range []string{"oci-archive:" + ociArchive + ":v1", "docker-archive:" + dockerArchive + ":example/app:v1"} {
		out, err := exec.Command("skopeo", "copy", "--quiet", "oci:"+layout+":v1", dst).CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo copy to %s: %v: %s", dst, err, out)
		}
	}
	for _, tc := range []struct{ name, path string }{
		{"oci layout", layout}, {"oci-archive", ociArchive}, {"docker-archive", dockerArchive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			id := s.ok(nil, "import-image", "--name", "app:v1", tc.path).lastLine()
			var img struct {
				ID     string   `json:"id"`
				Names  []string `json:"names"`
				Layers []string `json:"layers"`
				Config struct {
					RootFS struct {
						DiffIDs []string `json:"diff_ids"`
					} `json:"rootfs"`
				} `json:"config"`
			}
			must(t, json.Unmarshal([]byte(s.ok(nil, "inspect", "app:v1").stdout), &img))
			if img.ID != id || len(img.Layers) != 2 || len(img.Config.RootFS.DiffIDs) != 2 {
				t.Fatalf("image record: %+v", img)
			}
			var parent string
			for i, l := range img.Layers {
				diff := img.Config.RootFS.DiffIDs[i]
				if want := chainID(parent, diff); l != want {
					t.Fatalf("layer %d chain ID %s, want %s", i, l, want)
				}
				if got := sha256hex([]byte(s.ok(nil, "export", l).stdout)); got != diff {
					t.Fatalf("layer %d exports to %s, want its diff_id %s", i, got, diff)
				}
				parent = l
			}
			if !strings.Contains(s.ok(nil, "images").stdout, "app:v1") {
				t.Fatal("images does not list app:v1")
			}
			// A second import of the same image adds nothing.
			s.ok(nil, "import-image", tc.path)
			s.assertLayers(2)
			s.fails(nil, []string{"rm", img.Layers[1]}, "in use", "app:v1")
			s.ok(nil, "rmi", "app:v1")
			s.ok(nil, "check")
		})
	}
}

func TestImportImageWithTamperedLayerKeepsNothing(t *testing.T) {
	layout := umociImage(t)
	var index struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	data, err := os.ReadFile(filepath.Join(layout, "index.json"))
	must(t, err)
	must(t, json.Unmarshal(data, &index))
	blob := func(d string) string {
		return filepath.Join(layout, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))
	}
	var manifest struct {
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	}
	data, err = os.ReadFile(blob(index.Manifests[0].Digest))
	must(t, err)
	must(t, json.Unmarshal(data, &manifest))
	// Replace the top layer's blob by a valid gzip tar of other content:
	// the manifest digest check must refuse it after the base was applied.
	other := compressed(t, gnuTar(t, treeWith(t, map[string]string{"intruder": "x"})), compression.Gzip)
	top := blob(manifest.Layers[len(manifest.Layers)-1].Digest)
	fi, err := os.Stat(top)
	must(t, err)
	padded := append(other, make([]byte, max(0, int(fi.Size())-len(other)))...)
	must(t, os.WriteFile(top, padded[:max(len(other), int(fi.Size()))], 0o644))
	s := newStore(t)
	s.fails(nil, []string{"import-image", layout}, fmt.Sprint(manifest.Layers[len(manifest.Layers)-1].Digest[7:19]))
	s.assertLayers(0)
	if out := s.ok(nil, "images", "--json").stdout; strings.TrimSpace(out) != "[]" {
		t.Fatalf("a failed import left images: %s", out)
	}
}
