package statoverride

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseFormat(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Stat
		canon   string
		wantErr bool
	}{
		{in: "0:0:0755", want: Stat{Mode: 0o755}, canon: "0:0:0755"},
		{in: "1000:100:04755:file", want: Stat{UID: 1000, GID: 100, Mode: unix.S_IFREG | 0o4755}, canon: "1000:100:04755:file"},
		{in: "0:0:0100755", want: Stat{Mode: unix.S_IFREG | 0o755}, canon: "0:0:0755:file"},
		{in: "65534:65534:01777:dir", want: Stat{UID: 65534, GID: 65534, Mode: unix.S_IFDIR | 0o1777}, canon: "65534:65534:01777:dir"},
		{in: "0:0:0666:char-1-3", want: Stat{Mode: unix.S_IFCHR | 0o666, Rdev: unix.Mkdev(1, 3)}, canon: "0:0:0666:char-1-3"},
		{in: "0:6:0660:block-8-0", want: Stat{GID: 6, Mode: unix.S_IFBLK | 0o660, Rdev: unix.Mkdev(8, 0)}, canon: "0:6:0660:block-8-0"},
		{in: "0:0:0777:symlink", want: Stat{Mode: unix.S_IFLNK | 0o777}, canon: "0:0:0777:symlink"},
		{in: "0:0:0600:pipe", want: Stat{Mode: unix.S_IFIFO | 0o600}, canon: "0:0:0600:pipe"},
		{in: "0:0", wantErr: true},
		{in: "x:0:0755", wantErr: true},
		{in: "0:0:0999", wantErr: true},
		{in: "0:0:0755:weird", wantErr: true},
		{in: "0:0:0755:char-1", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Parse(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if f := Format(got); f != tc.canon {
				t.Fatalf("Format = %q, want %q", f, tc.canon)
			}
		})
	}
}

func TestSetGet(t *testing.T) {
	p := t.TempDir() + "/f"
	if err := unix.Mknod(p, unix.S_IFREG|0o600, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := Get(p); ok || err != nil {
		t.Fatalf("Get on a bare file: ok=%v err=%v", ok, err)
	}
	want := Stat{UID: 1, GID: 2, Mode: unix.S_IFREG | 0o2755}
	if err := Set(p, want); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := Get(p); !ok || err != nil || got != want {
		t.Fatalf("Get = %+v %v %v", got, ok, err)
	}
}
