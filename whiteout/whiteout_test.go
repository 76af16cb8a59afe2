package whiteout

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

func TestClassifyName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Entry
	}{
		{"file", Entry{Kind: None}},
		{".whatever", Entry{Kind: None}},
		{".wh.foo", Entry{Kind: Whiteout, Target: "foo"}},
		{".wh..hidden", Entry{Kind: Whiteout, Target: ".hidden"}},
		{".wh..wh..opq", Entry{Kind: Opaque}},
		{".wh..wh.plnk", Entry{Kind: Meta}},
		{".wh.", Entry{Kind: Meta}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ClassifyName(tc.name); got != tc.want {
				t.Fatalf("ClassifyName(%q) = %+v, want %+v", tc.name, got, tc.want)
			}
		})
	}
}

func TestCreateClassifyAndOpaque(t *testing.T) {
	testutil.NeedRoot(t)
	dir := t.TempDir()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fd := int(d.Fd())
	if err := Create(fd, "gone"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "xwh"), nil, 0o644)
	if err := unix.Lsetxattr(filepath.Join(dir, "xwh"), User.WhiteoutXattr(), nil, 0); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	for _, tc := range []struct {
		name string
		want Kind
	}{{"gone", Whiteout}, {"plain", None}, {"xwh", Whiteout}, {"sub", None}} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, tc.name), &st); err != nil {
			t.Fatal(err)
		}
		if got := Classify(fd, tc.name, &st); got.Kind != tc.want || (tc.want == Whiteout && got.Target != tc.name) {
			t.Fatalf("Classify(%s) = %+v, want kind %v", tc.name, got, tc.want)
		}
	}
	for _, ns := range Namespaces() {
		sub := filepath.Join(dir, "opq-"+ns.String())
		os.Mkdir(sub, 0o755)
		if ok, err := IsOpaque(sub); ok || err != nil {
			t.Fatalf("fresh dir opaque=%v err=%v", ok, err)
		}
		if err := SetOpaque(sub, ns); err != nil {
			t.Fatal(err)
		}
		if ok, err := IsOpaque(sub); !ok || err != nil {
			t.Fatalf("%s opaque dir: opaque=%v err=%v", ns, ok, err)
		}
		f, _ := os.Open(sub)
		ok, err := IsOpaqueFd(int(f.Fd()))
		f.Close()
		if !ok || err != nil {
			t.Fatalf("%s IsOpaqueFd=%v err=%v", ns, ok, err)
		}
	}
}

func TestNamespaces(t *testing.T) {
	for _, tc := range []struct {
		ns     Namespace
		opaque string
	}{{Trusted, "trusted.overlay.opaque"}, {User, "user.overlay.opaque"}} {
		if tc.ns.OpaqueXattr() != tc.opaque {
			t.Fatalf("%v.OpaqueXattr() = %s", tc.ns, tc.ns.OpaqueXattr())
		}
		back, err := ParseNamespace(tc.ns.String())
		if err != nil || back != tc.ns {
			t.Fatalf("ParseNamespace(%s) = %v, %v", tc.ns, back, err)
		}
		if !IsPrivateXattr(tc.opaque) {
			t.Fatalf("%s not private", tc.opaque)
		}
	}
	if _, err := ParseNamespace("security"); err == nil {
		t.Fatal("ParseNamespace accepted security")
	}
	if IsPrivateXattr("user.mime_type") || IsPrivateXattr("security.capability") || IsPrivateXattr("user.containers.note") {
		t.Fatal("ordinary xattrs classified private")
	}
	// A rootless store's records (containers/storage's names).
	for _, name := range []string{"user.containers.override_stat", "user.containers.override_security.capability"} {
		if !IsPrivateXattr(name) {
			t.Fatalf("%s not private", name)
		}
	}
}
