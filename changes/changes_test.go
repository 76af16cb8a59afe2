package changes

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/whiteout"
)

type stackCase struct {
	name   string
	lowers [][]op // top first
	upper  []op
	want   []string // Diff output, "K /path"
	// wantTar, when set, is the exact list of tar entry names in order.
	wantTar []string
	// view mounts the original and the round-tripped stacks: the kernel
	// where it reads every format the case uses, else the union.
	view view
}

const (
	trusted = whiteout.Trusted
	user    = whiteout.User
)

func stackCases() []stackCase {
	return []stackCase{{
		name:    "add and change",
		lowers:  [][]op{{file("etc/passwd", "root"), file("etc/group", "g"), file("bin/sh", "sh")}},
		upper:   []op{file("etc/passwd", "root\nme"), file("etc/new", "n"), file("usr/local/x", "x")},
		want:    []string{"C /etc", "A /etc/new", "C /etc/passwd", "A /usr", "A /usr/local", "A /usr/local/x"},
		wantTar: []string{"etc/", "etc/new", "etc/passwd", "usr/", "usr/local/", "usr/local/x"},
	}, {
		name:    "whiteout device",
		lowers:  [][]op{{file("a/f", "f"), file("a/g", "g")}},
		upper:   []op{dir("a"), whDev("a/f")},
		want:    []string{"C /a", "D /a/f"},
		wantTar: []string{"a/", "a/.wh.f"},
	}, {
		name:    "whiteout file",
		lowers:  [][]op{{file("a/f", "f"), file("a/g", "g")}},
		upper:   []op{dir("a"), whFile("a/f")},
		want:    []string{"C /a", "D /a/f"},
		wantTar: []string{"a/", "a/.wh.f"},
		view:    unionView,
	}, {
		name:    "xattr whiteout",
		lowers:  [][]op{{file("a/f", "f"), file("a/g", "g")}},
		upper:   []op{dir("a"), xwhiteout("a/g", trusted)},
		want:    []string{"C /a", "D /a/g"},
		wantTar: []string{"a/", "a/.wh.g"},
		// The kernel reads xattr whiteouts in lower layers, where the
		// oracle mount puts the upper; the union only in its lowers.
	}, {
		name:    "whiteouts hiding nothing are dropped",
		lowers:  [][]op{{whDev("x"), file("other", "o")}, {file("x", "hidden already")}},
		upper:   []op{whDev("x"), whDev("ghost"), whFile("ghost2"), file("new", "n")},
		want:    []string{"A /new"},
		wantTar: []string{"new"},
		view:    unionView,
	}, {
		name:    "whiteout of a lower directory",
		lowers:  [][]op{{file("d/sub/f", "f"), file("keep", "k")}},
		upper:   []op{whDev("d")},
		want:    []string{"D /d"},
		wantTar: []string{".wh.d"},
	}, {
		name:    "opaque dir, trusted xattr",
		lowers:  [][]op{{file("d/a", "a"), file("d/b", "b"), file("d/sub/c", "c")}},
		upper:   []op{opaqueXattr("d", trusted), file("d/a", "new a"), file("d/n", "n")},
		want:    []string{"C /d", "C /d/a", "D /d/b", "A /d/n", "D /d/sub"},
		wantTar: []string{"d/", "d/.wh..wh..opq", "d/a", "d/n"},
	}, {
		name:    "opaque dir, user xattr",
		lowers:  [][]op{{file("d/a", "a"), file("d/b", "b")}},
		upper:   []op{opaqueXattr("d", user), file("d/n", "n")},
		want:    []string{"C /d", "D /d/a", "D /d/b", "A /d/n"},
		wantTar: []string{"d/", "d/.wh..wh..opq", "d/n"},
		view:    unionView,
	}, {
		name:    "opaque dir, OCI marker file",
		lowers:  [][]op{{file("d/a", "a"), file("d/b", "b")}},
		upper:   []op{opaqueFile("d"), file("d/b", "b2")},
		want:    []string{"C /d", "D /d/a", "C /d/b"},
		wantTar: []string{"d/", "d/.wh..wh..opq", "d/b"},
		view:    unionView,
	}, {
		name:    "whiteout file beside an upper dir replaces it",
		lowers:  [][]op{{file("d/a", "a")}},
		upper:   []op{whFile("d"), file("d/b", "b")},
		want:    []string{"C /d", "D /d/a", "A /d/b"},
		wantTar: []string{"d/", "d/.wh..wh..opq", "d/b"},
		view:    unionView,
	}, {
		name:    "opaque root (OCI marker)",
		lowers:  [][]op{{file("a", "a"), file("d/x", "x")}},
		upper:   []op{opaqueFile("."), file("b", "b"), file("d/y", "y")},
		want:    []string{"D /a", "A /b", "C /d", "D /d/x", "A /d/y"},
		wantTar: []string{".wh..wh..opq", "b", "d/", "d/y"},
		view:    unionView,
	}, {
		name:    "opaque dir hiding nothing",
		lowers:  [][]op{{file("other", "o")}},
		upper:   []op{opaqueXattr("newd", trusted), file("newd/f", "f")},
		want:    []string{"A /newd", "A /newd/f"},
		wantTar: []string{"newd/", "newd/f"},
	}, {
		name:    "dir below an opaque dir",
		lowers:  [][]op{{file("o/s/y", "y"), file("o/s/keep", "k"), file("o/t", "t")}},
		upper:   []op{opaqueXattr("o", trusted), file("o/s/z", "z"), file("o/s/keep", "k2")},
		want:    []string{"C /o", "C /o/s", "C /o/s/keep", "D /o/s/y", "A /o/s/z", "D /o/t"},
		wantTar: []string{"o/", "o/.wh..wh..opq", "o/s/", "o/s/keep", "o/s/z"},
	}, {
		name:   "redirect, absolute",
		lowers: [][]op{{file("a/dir/f1", "1"), file("a/dir/f2", "2"), file("a/dir/sub/s", "s"), file("a/keep", "k")}},
		upper: []op{dir("a"), whDev("a/dir"), dir("b"), redirect("b/moved", "/a/dir", trusted),
			file("b/moved/f3", "3"), whDev("b/moved/f1")},
		want: []string{"C /a", "D /a/dir", "A /b", "A /b/moved", "A /b/moved/f2", "A /b/moved/f3",
			"A /b/moved/sub", "A /b/moved/sub/s"},
		wantTar: []string{"a/", "a/.wh.dir", "b/", "b/moved/", "b/moved/f2", "b/moved/f3", "b/moved/sub/", "b/moved/sub/s"},
	}, {
		name:    "redirect, relative",
		lowers:  [][]op{{file("p/old/x", "x"), file("p/old/y", "y")}},
		upper:   []op{dir("p"), whDev("p/old"), redirect("p/new", "old", trusted), file("p/new/z", "z")},
		want:    []string{"C /p", "A /p/new", "A /p/new/x", "A /p/new/y", "A /p/new/z", "D /p/old"},
		wantTar: []string{"p/", "p/.wh.old", "p/new/", "p/new/x", "p/new/y", "p/new/z"},
	}, {
		name:    "redirect, user namespace, onto a lower dir",
		lowers:  [][]op{{file("a/f", "f"), file("b/g", "g"), file("b/f", "old f")}},
		upper:   []op{whDev("a"), redirect("b", "/a", user)},
		want:    []string{"D /a", "C /b", "C /b/f", "D /b/g"},
		wantTar: []string{".wh.a", "b/", "b/.wh..wh..opq", "b/f"},
		view:    unionView,
	}, {
		name: "redirect source merged from several lowers",
		lowers: [][]op{
			{file("src/a", "a"), whDev("src/b"), dir("src/d"), file("src/d/top", "t")},
			{opaqueXattr("src", trusted), file("src/b", "b"), file("src/c", "c"), file("src/d/bottom", "b")},
			{file("src/e", "hidden by opaque"), file("src/d/x", "x")},
		},
		upper: []op{whDev("src"), redirect("dst", "/src", trusted), file("dst/c", "c2")},
		want:  []string{"A /dst", "A /dst/a", "A /dst/c", "A /dst/d", "A /dst/d/bottom", "A /dst/d/top", "D /src"},
		view:  kernelView,
	}, {
		name: "types, modes, owners, xattrs, hardlinks",
		upper: []op{
			fileMode("bin/su", "su", 0o755|os.ModeSetuid|os.ModeSetgid),
			dir("tmp"), fileMode("tmp/.keep", "", 0o600), func(t testing.TB, root string) { os.Chmod(filepath.Join(root, "tmp"), 0o1777|os.ModeSticky) },
			symlink("lib", "usr/lib"), fifo("run/fifo"), chardev("dev/null", 1, 3), blockdev("dev/loop9", 7, 9),
			file("owned", "o"), chown("owned", 1000, 3_000_000),
			file("xa", "x"), xattr("xa", "user.foo", "bar"), xattr("xa", "user.empty", ""), xattr("xa", "security.capability", "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
			xattr("xa", "trusted.overlay.origin", "private"), xattr("xa", "user.layerfs.origin", "42"), xattr("xa", "trusted.other", "t"),
			file("h1", "linked"), hardlink("h2", "h1"), hardlink("sub/h3", "h1"),
			file(strings.Repeat("long/", 30)+"name", "deep"),
		},
		want: nil, // filled below: everything is added
	}, {
		name:   "type changes",
		lowers: [][]op{{file("x", "x"), file("y/in", "in"), symlink("z", "x"), dir("w")}},
		upper:  []op{dir("x"), file("x/inner", "i"), file("y", "file now"), file("z", "z"), symlink("w", "/etc")},
		want:   []string{"C /w", "C /x", "A /x/inner", "C /y", "C /z"},
	}, {
		name:   "nested changes",
		lowers: [][]op{{file("a/b/c/f", "f"), file("a/b/other", "o")}, {file("a/b/c/g", "lowest")}},
		upper:  []op{file("a/b/c/h", "h"), whDev("a/b/c/g")},
		want:   []string{"C /a", "C /a/b", "C /a/b/c", "D /a/b/c/g", "A /a/b/c/h"},
	}, {
		name: "sparse files",
		upper: []op{
			sparseFile("sparse", 10<<20, map[int64]string{0: "head", 5 << 20: "middle"}),
			sparseFile("allhole", 3<<20, nil),
			sparseFile("tailonly", 1<<20, map[int64]string{1<<20 - 3: "end"}),
		},
		want:    []string{"A /allhole", "A /sparse", "A /tailonly"},
		wantTar: []string{"allhole", "sparse", "tailonly"},
	}, {
		name:   "rootless override_stat",
		lowers: [][]op{{file("etc/f", "f")}},
		upper: []op{
			fileMode("etc/f", "f2", 0o600), xattr("etc/f", "user.containers.override_stat", "0:42:04755"),
			fileMode("dev/null", "", 0o600), xattr("dev/null", "user.containers.override_stat", "0:0:0666:char-1-3"),
		},
		want: []string{"A /dev", "A /dev/null", "C /etc", "C /etc/f"},
		view: unionView,
	}}
}

func TestDiff(t *testing.T) {
	testutil.NeedRoot(t) // trusted.* xattrs, devices, chown
	for _, tc := range stackCases() {
		t.Run(tc.name, func(t *testing.T) {
			lowers, upper := makeStack(t, tc.lowers, tc.upper)
			got, err := Diff(context.Background(), upper, lowers)
			if err != nil {
				t.Fatalf("Diff: %v", err)
			}
			var lines []string
			for _, c := range got {
				lines = append(lines, c.String())
			}
			want := tc.want
			if want == nil {
				want = allAdded(t, upper)
			}
			if !slices.Equal(lines, want) {
				t.Errorf("Diff:\n got  %q\n want %q", lines, want)
			}
			if !slices.IsSortedFunc(got, func(a, b Change) int { return strings.Compare(a.Path, b.Path) }) {
				t.Errorf("Diff is not sorted by path: %q", lines)
			}
		})
	}
}

// allAdded lists every object of a tree built on no lowers as added.
func allAdded(t testing.TB, root string) []string {
	var out []string
	filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if p != root {
			out = append(out, "A "+strings.TrimPrefix(p, root))
		}
		return nil
	})
	slices.Sort(out)
	return out
}

func TestWriteLayerEntries(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tc := range stackCases() {
		t.Run(tc.name, func(t *testing.T) {
			lowers, upper := makeStack(t, tc.lowers, tc.upper)
			data := writeLayer(t, upper, lowers, WriteOptions{})
			ents := readTar(t, data)
			var names []string
			for _, e := range ents {
				names = append(names, e.hdr.Name)
				for k := range e.hdr.PAXRecords {
					if strings.HasPrefix(k, "SCHILY.xattr.") && whiteout.IsPrivateXattr(strings.TrimPrefix(k, "SCHILY.xattr.")) {
						t.Errorf("%s: private xattr %s written", e.hdr.Name, k)
					}
				}
				base := filepath.Base(e.hdr.Name)
				if strings.HasPrefix(base, whiteout.Prefix) && (e.hdr.Size != 0 || e.hdr.Mode != 0 || e.hdr.Typeflag != '0') {
					t.Errorf("%s: whiteout is not an empty mode-0 regular file: %+v", e.hdr.Name, e.hdr)
				}
			}
			if tc.wantTar != nil && !slices.Equal(names, tc.wantTar) {
				t.Errorf("tar entries:\n got  %q\n want %q", names, tc.wantTar)
			}
			// Parents come before their children.
			seen := map[string]bool{}
			for _, n := range names {
				dir := filepath.Dir(strings.TrimSuffix(n, "/"))
				if dir != "." && !seen[dir] {
					t.Errorf("%s comes before its directory", n)
				}
				seen[strings.TrimSuffix(n, "/")] = true
			}
			if again := writeLayer(t, upper, lowers, WriteOptions{}); !bytes.Equal(data, again) {
				t.Errorf("two WriteLayer runs differ (%d and %d bytes)", len(data), len(again))
			}
		})
	}
}

// TestRoundTrip mounts lowers+upper, and lowers + the produced layer
// applied as a new layer dir, and compares the two views.
func TestRoundTrip(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tc := range stackCases() {
		for _, sparse := range []bool{true, false} {
			name := tc.name
			if !sparse {
				name += "/dense"
				if !strings.Contains(tc.name, "sparse") {
					continue
				}
			}
			t.Run(name, func(t *testing.T) {
				lowers, upper := makeStack(t, tc.lowers, tc.upper)
				data := writeLayer(t, upper, lowers, WriteOptions{NoSparse: !sparse})
				applied := applyLayer(t, data)
				got := snapshot(t, mountStack(t, tc.view, "", append([]string{applied}, lowers...)))
				want := snapshot(t, mountStack(t, tc.view, upper, lowers))
				if len(want) == 0 {
					t.Fatal("the original view is empty")
				}
				compareSnapshots(t, want, got)
			})
		}
	}
}

// TestSocketLeftOut: a tar has no type for sockets; Diff still lists them.
func TestSocketLeftOut(t *testing.T) {
	testutil.NeedRoot(t)
	_, upper := makeStack(t, nil, []op{file("f", "f"), func(t testing.TB, root string) {
		if err := unix.Mknod(filepath.Join(root, "sock"), unix.S_IFSOCK|0o755, 0); err != nil {
			t.Fatal(err)
		}
	}})
	got, err := Diff(context.Background(), upper, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].String() != "A /sock" {
		t.Errorf("Diff: %v", got)
	}
	ents := readTar(t, writeLayer(t, upper, nil, WriteOptions{}))
	if len(ents) != 1 || ents[0].hdr.Name != "f" {
		t.Errorf("tar entries: %v, want only f", ents)
	}
}
