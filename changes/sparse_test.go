package changes

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/layertar"
)

// countingReader tells how far archive/tar has read, so each entry's raw
// header bytes can be cut out of the stream.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func sparseFixture(t *testing.T) (upper string, want map[string][]layertar.Fragment) {
	t.Helper()
	_, upper = makeStack(t, nil, []op{
		sparseFile("sparse", 10<<20, map[int64]string{0: "head", 5 << 20: "middle"}),
		sparseFile("allhole", 3<<20, nil),
		sparseFile(strings.Repeat("d", 90)+"/"+strings.Repeat("n", 90), 1<<20, map[int64]string{1<<20 - 3: "end"}),
		file("dense", "no holes"),
		chown("sparse", 3_000_000, 5),
		xattr("sparse", "user.k", "v"),
	})
	// The data maps as the filesystem keeps them: read them the same way
	// the writer must, as a check that holes survive.
	want = map[string][]layertar.Fragment{}
	for _, name := range []string{"sparse", "allhole", strings.Repeat("d", 90) + "/" + strings.Repeat("n", 90)} {
		f, err := os.Open(filepath.Join(upper, name))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		frags, err := dataFragments(int(f.Fd()), st.Size())
		f.Close()
		if err != nil || frags == nil {
			t.Skipf("the filesystem under %s does not report holes (%v)", upper, err)
		}
		for _, fr := range frags {
			want[name] = append(want[name], layertar.Fragment{Offset: fr.off, Length: fr.length})
		}
	}
	return upper, want
}

// TestSparseEntries reads the produced tar with archive/tar (content) and
// layertar.ParseSparse (the raw PAX 1.0 map) and checks both.
func TestSparseEntries(t *testing.T) {
	testutil.NeedRoot(t)
	upper, wantMaps := sparseFixture(t)
	data := writeLayer(t, upper, nil, WriteOptions{})
	cr := &countingReader{r: bytes.NewReader(data)}
	tr := tar.NewReader(cr)
	seen := 0
	for {
		start := cr.n
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		frags, sparse, err := layertar.ParseSparse(data[start:cr.n], start)
		if err != nil {
			t.Fatalf("%s: ParseSparse: %v", hdr.Name, err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("%s: %v", hdr.Name, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			if sparse {
				t.Errorf("%s: a sparse map on a %c entry", hdr.Name, hdr.Typeflag)
			}
			continue
		}
		orig, err := os.ReadFile(filepath.Join(upper, hdr.Name))
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(body) != sha256.Sum256(orig) {
			t.Errorf("%s: content differs after archive/tar read it (%d vs %d bytes)", hdr.Name, len(body), len(orig))
		}
		want, wantSparse := wantMaps[hdr.Name]
		if sparse != wantSparse {
			t.Errorf("%s: sparse=%v, want %v", hdr.Name, sparse, wantSparse)
			continue
		}
		if !sparse {
			continue
		}
		seen++
		if hdr.ModTime.UnixNano() != fixedTime().UnixNano() {
			t.Errorf("%s: mtime %v, want %v", hdr.Name, hdr.ModTime, fixedTime())
		}
		if hdr.Name == "sparse" && (hdr.Uid != 3_000_000 || hdr.Gid != 5 || hdr.PAXRecords["SCHILY.xattr.user.k"] != "v") {
			t.Errorf("%s: uid %d gid %d xattrs %v, want 3000000, 5 and user.k=v", hdr.Name, hdr.Uid, hdr.Gid, hdr.PAXRecords)
		}
		if len(frags) != len(want)+1 && len(frags) != len(want) {
			t.Errorf("%s: map %v, want %v (plus the end marker)", hdr.Name, frags, want)
			continue
		}
		for i, f := range want {
			if frags[i] != f {
				t.Errorf("%s: fragment %d is %v, want %v", hdr.Name, i, frags[i], f)
			}
		}
		if last := frags[len(frags)-1]; last.Offset+last.Length != hdr.Size {
			t.Errorf("%s: map ends at %d, file is %d bytes", hdr.Name, last.Offset+last.Length, hdr.Size)
		}
	}
	if seen != len(wantMaps) {
		t.Errorf("%d sparse entries, want %d", seen, len(wantMaps))
	}
	if len(data) > 64<<10 {
		t.Errorf("the tar of %d MiB of mostly holes takes %d bytes", 14, len(data))
	}
}

// TestGNUTar lists and extracts the produced tar with GNU tar: names,
// sizes, content, holes, hardlinks and xattrs must come out as written.
func TestGNUTar(t *testing.T) {
	testutil.NeedRoot(t)
	gnutar := testutil.NeedTool(t, "tar")
	upper, _ := sparseFixture(t)
	build(t, upper, []op{file("h1", "linked"), hardlink("h2", "h1"), xattr("h1", "user.k", "v"), symlink("s", "h1")})
	data := writeLayer(t, upper, nil, WriteOptions{})
	tarFile := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(tarFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(gnutar, "--list", "-v", "-f", tarFile).CombinedOutput()
	if err != nil {
		t.Fatalf("tar --list: %v\n%s", err, out)
	}
	list := string(out)
	for _, want := range []string{" 10485760 ", "/" + strings.Repeat("n", 90), "h2 link to h1", "s -> h1"} {
		if !strings.Contains(list, want) {
			t.Errorf("tar --list output lacks %q:\n%s", want, list)
		}
	}
	if strings.Contains(list, "GNUSparseFile") || strings.Contains(list, "PaxHeaders") {
		t.Errorf("GNU tar shows the sparse entries' internal names:\n%s", list)
	}
	dst := t.TempDir()
	if out, err := exec.Command(gnutar, "-x", "--xattrs", "--xattrs-include=*", "-f", tarFile, "-C", dst).CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}
	err = filepath.Walk(upper, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(upper, p)
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(dst, rel))
		if err != nil {
			t.Errorf("%s: not extracted: %v", rel, err)
			return nil
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: content differs after GNU tar extracted it", rel)
		}
		var st unix.Stat_t
		unix.Stat(filepath.Join(dst, rel), &st)
		if fi.Size() > 1<<20-1 && st.Blocks*512 > 64<<10 {
			t.Errorf("%s: extracted with %d blocks: its holes were filled", rel, st.Blocks)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var a, b unix.Stat_t
	unix.Stat(filepath.Join(dst, "h1"), &a)
	unix.Stat(filepath.Join(dst, "h2"), &b)
	if a.Ino != b.Ino {
		t.Errorf("h1 and h2 are not one inode after extraction")
	}
	if v, err := getXattr(filepath.Join(dst, "h1"), "user.k"); err != nil || string(v) != "v" {
		t.Errorf("xattr user.k after extraction: %q, %v", v, err)
	}
}
