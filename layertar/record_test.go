package layertar

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/vbatts/tar-split/tar/storage"
)

// recordEntries covers what the encoding has to get right: binary
// payloads, nil and empty payloads, names needing every kind of escape,
// names that are not UTF-8, negative and zero sizes.
func recordEntries() []storage.Entry {
	bin := make([]byte, 1500)
	for i := range bin {
		bin[i] = byte(i * 7)
	}
	return []storage.Entry{
		{Type: storage.SegmentType, Payload: bin},
		{Type: storage.SegmentType, Payload: []byte{}},
		{Type: storage.FileType, Name: "plain/file.txt", Size: 12, Payload: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{Type: storage.FileType, Name: "dir/"},
		{Type: storage.FileType, Name: `quote"back\slash<lt>gt&amp`, Size: 1, Payload: []byte{0}},
		{Type: storage.FileType, Name: "ctl\x00\x01\b\f\n\r\t\x1f\x7f", Size: -5},
		{Type: storage.FileType, Name: "unicode/é漢字\u2028\u2029\U0001F600"},
		{Type: storage.FileType, Name: "bad\xffutf8\xc3"},
		{Type: storage.FileType, NameRaw: []byte("raw\xfe"), Size: 3, Payload: []byte{9}},
		{Type: storage.FileType, Name: "./plain//file.txt/"}, // a duplicate once cleaned
		{Type: storage.Type(7), Name: "unknown type"},
	}
}

func TestRecordWriterMatchesJSONPacker(t *testing.T) {
	var mine, lib bytes.Buffer
	rw, jp := NewRecordWriter(&mine), storage.NewJSONPacker(&lib)
	for i, e := range recordEntries() {
		p1, err1 := rw.AddEntry(e)
		p2, err2 := jp.AddEntry(e)
		if p1 != p2 || !errors.Is(err1, err2) && err1 != err2 {
			t.Fatalf("entry %d: RecordWriter (%d, %v), tar-split (%d, %v)", i, p1, err1, p2, err2)
		}
		if !bytes.Equal(mine.Bytes(), lib.Bytes()) {
			t.Fatalf("entry %d: RecordWriter wrote\n%s\ntar-split wrote\n%s", i, mine.Bytes(), lib.Bytes())
		}
	}
	if !strings.Contains(lib.String(), `\u003c`) || !strings.Contains(lib.String(), `\u2028`) {
		t.Fatal("the entries do not exercise HTML and line-separator escapes")
	}
}

// readAll reads every entry, copying each (the reader reuses its own).
func readAll(t *testing.T, next func() (*storage.Entry, error)) ([]storage.Entry, error) {
	t.Helper()
	var out []storage.Entry
	for {
		e, err := next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		c := *e
		c.Payload = bytes.Clone(e.Payload)
		out = append(out, c)
	}
}

func TestRecordReaderMatchesJSONUnpacker(t *testing.T) {
	var lib bytes.Buffer
	jp := storage.NewJSONPacker(&lib)
	for _, e := range recordEntries() {
		jp.AddEntry(e) // the duplicate is refused and not written
	}
	long := storage.Entry{Type: storage.SegmentType, Payload: bytes.Repeat([]byte("x"), 700<<10)}
	jp.AddEntry(long)
	canonical := lib.String()
	for _, tc := range []struct{ name, record string }{
		{"as written", canonical},
		{"no final newline", strings.TrimSuffix(canonical, "\n")},
		{"blank lines and spaces", "\n  \n" + strings.ReplaceAll(canonical, "\n", " \n\n")},
		{"fields reordered", `{"position":0,"payload":"AAE=","type":2}` + "\n" + `{"size":3,"type":1,"name":"a\u0062c","payload":"AAAAAAAAAAA=","position":1}` + "\n"},
		{"escaped base64", `{"type":2,"payload":"AA\u0045=","position":0}` + "\n"},
		{"duplicate file", `{"type":1,"name":"a","payload":null,"position":0}` + "\n" + `{"type":1,"name":"./a","payload":null,"position":1}` + "\n"},
		{"truncated", canonical[:len(canonical)/2]},
		{"garbage line", canonical[:200] + "\nnot json\n"},
		{"number with exponent", `{"type":1e0,"payload":null,"position":0}` + "\n"},
		{"leading zero", `{"type":01,"payload":null,"position":0}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, wantErr := readAll(t, storage.NewJSONUnpacker(strings.NewReader(tc.record)).Next)
			got, gotErr := readAll(t, NewRecordReader(strings.NewReader(tc.record)).Next)
			if (wantErr == nil) != (gotErr == nil) {
				t.Fatalf("RecordReader error %v, tar-split's %v", gotErr, wantErr)
			}
			if wantErr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("RecordReader read %d entries %+.200v\ntar-split's %d %+.200v", len(got), got, len(want), want)
			}
			if errors.Is(wantErr, storage.ErrDuplicatePath) && !errors.Is(gotErr, storage.ErrDuplicatePath) {
				t.Fatalf("RecordReader error %v, want ErrDuplicatePath", gotErr)
			}
		})
	}
}

// FuzzRecordLine: any one line reads as encoding/json reads it, or fails
// where it fails.
func FuzzRecordLine(f *testing.F) {
	var lib bytes.Buffer
	jp := storage.NewJSONPacker(&lib)
	for _, e := range recordEntries() {
		jp.AddEntry(e)
	}
	for _, line := range strings.Split(lib.String(), "\n") {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		if strings.Contains(line, "\n") {
			return
		}
		var want storage.Entry
		wantErr := json.Unmarshal([]byte(line), &want)
		rr := NewRecordReader(strings.NewReader(line + "\n"))
		got, gotErr := rr.Next()
		if strings.TrimSpace(line) == "" {
			if gotErr != io.EOF {
				t.Fatalf("blank line: %v, want io.EOF", gotErr)
			}
			return
		}
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("line %q: RecordReader error %v, encoding/json's %v", line, gotErr, wantErr)
		}
		if wantErr == nil && !reflect.DeepEqual(*got, want) {
			t.Fatalf("line %q: RecordReader %+v, encoding/json %+v", line, *got, want)
		}
	})
}

// FuzzRecordWriter: any entry encodes exactly as tar-split's packer
// encodes it.
func FuzzRecordWriter(f *testing.F) {
	f.Add(1, "name", []byte(nil), int64(0), []byte("payload"))
	f.Add(2, "", []byte("raw\xff"), int64(-1), []byte{})
	f.Fuzz(func(t *testing.T, typ int, name string, raw []byte, size int64, payload []byte) {
		e := storage.Entry{Type: storage.Type(typ), Name: name, NameRaw: raw, Size: size, Payload: payload}
		var mine, lib bytes.Buffer
		_, err1 := NewRecordWriter(&mine).AddEntry(e)
		_, err2 := storage.NewJSONPacker(&lib).AddEntry(e)
		if (err1 == nil) != (err2 == nil) || !bytes.Equal(mine.Bytes(), lib.Bytes()) {
			t.Fatalf("RecordWriter (%v)\n%s\ntar-split (%v)\n%s", err1, mine.Bytes(), err2, lib.Bytes())
		}
	})
}
