package ownertable

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
)

func TestParse(t *testing.T) {
	sh := statoverride.Stat{Mode: unix.S_IFLNK | 0o777}
	fifo := statoverride.Stat{UID: 1000, GID: 1000, Mode: unix.S_IFIFO | 0o2640}
	for _, tc := range []struct {
		name    string
		in      string
		want    Table
		info    Info
		wantErr string
	}{
		{name: "empty", in: "", want: Table{}},
		{name: "header only", in: header, want: Table{}},
		{name: "two entries", in: header + "\"bin/sh\" 0:0:0777:symlink\n\"run/f\" 1000:1000:02640:pipe\n",
			want: Table{"bin/sh": sh, "run/f": fifo}, info: Info{Lines: 2}},
		{name: "later line wins", in: "\"bin/sh\" 5:5:0777:symlink\n\"bin/sh\" 0:0:0777:symlink\n",
			want: Table{"bin/sh": sh}, info: Info{Lines: 2}},
		{name: "remove", in: "\"bin/sh\" 0:0:0777:symlink\n\"run/f\" 1000:1000:02640:pipe\n\"bin/sh\" -\n",
			want: Table{"run/f": fifo}, info: Info{Lines: 3}},
		{name: "escaped name", in: "\"a\\nb \\\"c\\\"\\xff\" 0:0:0777:symlink\n",
			want: Table{"a\nb \"c\"\xff": sh}, info: Info{Lines: 1}},
		{name: "torn last line", in: "\"bin/sh\" 0:0:0777:symlink\n\"run/f\" 1000:10",
			want: Table{"bin/sh": sh}, info: Info{Lines: 1, Torn: true}},
		{name: "comments and blank lines", in: "# x\n\n\"bin/sh\" 0:0:0777:symlink\n",
			want: Table{"bin/sh": sh}, info: Info{Lines: 1}},
		{name: "unquoted path", in: "bin/sh 0:0:0777:symlink\n", wantErr: "line 1"},
		{name: "backquoted path", in: "`bin/sh` 0:0:0777:symlink\n", wantErr: "quoted path"},
		{name: "absolute path", in: "\"/bin/sh\" 0:0:0777:symlink\n", wantErr: "clean relative"},
		{name: "dot-dot", in: "\"../x\" 0:0:0777:symlink\n", wantErr: "clean relative"},
		{name: "not clean", in: "\"a//b\" 0:0:0777:symlink\n", wantErr: "clean relative"},
		{name: "root", in: "\".\" 0:0:0777:symlink\n", wantErr: "clean relative"},
		{name: "NUL in path", in: "\"a\\x00b\" 0:0:0777:symlink\n", wantErr: "clean relative"},
		{name: "no space", in: "\"a\"0:0:0777:symlink\n", wantErr: "one space"},
		{name: "two spaces", in: "\"a\"  0:0:0777:symlink\n", wantErr: "stray"},
		{name: "bad record", in: "\"a\" 0:0\n", wantErr: "UID:GID"},
		{name: "mode beyond type and permissions", in: "\"a\" 0:0:01770777\n", wantErr: "not a file type"},
		{name: "error names its line", in: "\"a\" 0:0:0777:symlink\n\"b\" x\n", wantErr: "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, info, err := Parse([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.want) || info != tc.info {
				t.Fatalf("Parse = %v %+v, want %v %+v", got, info, tc.want, tc.info)
			}
		})
	}
}

func TestMarshalIsSortedAndRoundTrips(t *testing.T) {
	tab := Table{
		"z":                 {Mode: unix.S_IFLNK | 0o777},
		"a/b":               {UID: 65534, GID: 65534, Mode: unix.S_IFIFO | 0o1600},
		"a b":               {UID: 1000, GID: 1000, Mode: unix.S_IFSOCK | 0o755},
		"new\nline\x01\xfe": {UID: 1, GID: 2, Mode: unix.S_IFLNK | 0o777},
	}
	data := Marshal(tab)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	want := []string{
		strings.TrimSuffix(header, "\n"),
		`"a b" 1000:1000:0755:socket`,
		`"a/b" 65534:65534:01600:pipe`,
		`"new\nline\x01\xfe" 1:2:0777:symlink`,
		`"z" 0:0:0777:symlink`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Marshal:\n%s\nwant:\n%s", data, strings.Join(want, "\n"))
	}
	back, info, err := Parse(data)
	if err != nil || !maps.Equal(back, tab) || info.Lines != len(tab) || info.Torn {
		t.Fatalf("Parse(Marshal) = %v %+v %v, want %v", back, info, err, tab)
	}
	if bad := Marshal(Table{"/abs": {}, "ok": {Mode: unix.S_IFLNK | 0o777}}); strings.Contains(string(bad), "abs") {
		t.Errorf("Marshal wrote a path no reader accepts:\n%s", bad)
	}
}

func TestAppendedLinesApply(t *testing.T) {
	rec := statoverride.Stat{UID: 7, GID: 8, Mode: unix.S_IFIFO | 0o640}
	b := Marshal(Table{"x": {Mode: unix.S_IFLNK | 0o777}})
	b = AppendSet(b, "y", rec)
	b = AppendRemove(b, "x")
	b = AppendSet(b, "y/z", rec)
	got, info, err := Parse(b)
	if err != nil || !maps.Equal(got, Table{"y": rec, "y/z": rec}) || info.Lines != 4 {
		t.Fatalf("Parse = %v %+v %v", got, info, err)
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, FileName)
	if tab, _, err := ReadFile(name); err != nil || len(tab) != 0 {
		t.Fatalf("ReadFile of a missing table = %v, %v; want empty", tab, err)
	}
	tab := Table{"bin/sh": {Mode: unix.S_IFLNK | 0o777}}
	if err := WriteFile(name, tab); err != nil {
		t.Fatal(err)
	}
	if got, _, err := ReadFile(name); err != nil || !maps.Equal(got, tab) {
		t.Fatalf("ReadFile = %v, %v; want %v", got, err, tab)
	}
	if err := WriteFile(name+".x", Table{}); err != nil {
		t.Fatal(err)
	}
	tab["run/p"] = statoverride.Stat{UID: 3, Mode: unix.S_IFIFO | 0o600}
	for _, sync := range []bool{false, true} {
		if err := ReplaceFile(name, filepath.Join(dir, "tmp"), tab, sync); err != nil {
			t.Fatal(err)
		}
		if got, _, err := ReadFile(name); err != nil || !maps.Equal(got, tab) {
			t.Fatalf("after ReplaceFile: %v, %v; want %v", got, err, tab)
		}
		if _, err := os.Stat(filepath.Join(dir, "tmp")); !os.IsNotExist(err) {
			t.Errorf("ReplaceFile left its temp file: %v", err)
		}
	}
	if err := os.WriteFile(name, []byte("\"x\" nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadFile(name); err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("ReadFile of a bad table: %v, want an error naming the file", err)
	}
}

func TestNeedsTable(t *testing.T) {
	for _, tc := range []struct {
		mode uint32
		want bool
	}{
		{unix.S_IFLNK | 0o777, true},
		{unix.S_IFIFO, true},
		{unix.S_IFSOCK, true},
		{unix.S_IFREG | 0o644, false},
		{unix.S_IFDIR, false},
		{unix.S_IFCHR, false},
		{unix.S_IFBLK, false},
	} {
		if got := NeedsTable(tc.mode); got != tc.want {
			t.Errorf("NeedsTable(%#o) = %v, want %v", tc.mode, got, tc.want)
		}
	}
}

// FuzzParse: whatever Parse accepts, Marshal writes back so that Parse
// reads the same table, and the compact form is stable.
func FuzzParse(f *testing.F) {
	f.Add([]byte(header + "\"bin/sh\" 0:0:0777:symlink\n\"run/f\" 1000:1000:02640:pipe\n"))
	f.Add([]byte("\"a\\xffb\" 1:1:0600:pipe\n\"a\\xffb\" -\n\"c\" 0:0:0666:char-1-3\n"))
	f.Add([]byte("\"x\" 0:0:0100755\n\"y\" 1:2:0777:symlink"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, _, err := Parse(data)
		if err != nil {
			return
		}
		out := Marshal(tab)
		back, info, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(%v)): %v\n%s", tab, err, out)
		}
		if !maps.Equal(back, tab) || info.Lines != len(tab) || info.Torn {
			t.Fatalf("round trip: %v %+v, want %v", back, info, tab)
		}
		if again := Marshal(back); string(again) != string(out) {
			t.Fatalf("Marshal is not stable:\n%s\n%s", out, again)
		}
	})
}
