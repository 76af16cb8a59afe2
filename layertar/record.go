package layertar

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"unicode/utf8"

	"github.com/vbatts/tar-split/tar/storage"
)

// RecordWriter writes a tar-split record: one JSON object per line, byte
// for byte what tar-split's storage.NewJSONPacker writes (its unpacker and
// tools read it), without encoding/json's reflection. For a layer of small
// files that encoding cost more CPU than parsing the tar.
type RecordWriter struct {
	w    io.Writer
	line []byte
	pos  int
	seen map[string]struct{}
}

// NewRecordWriter writes entries to w, one Write per entry.
func NewRecordWriter(w io.Writer) *RecordWriter {
	return &RecordWriter{w: w, seen: map[string]struct{}{}}
}

// AddEntry appends e and returns its position. Like tar-split's packer, it
// moves a name that is not UTF-8 to NameRaw and refuses a second file
// entry with the same cleaned name (storage.ErrDuplicatePath).
func (rw *RecordWriter) AddEntry(e storage.Entry) (int, error) {
	if e.Name != "" && !utf8.ValidString(e.Name) {
		e.NameRaw = []byte(e.Name)
		e.Name = ""
	}
	if e.Type == storage.FileType {
		name := filepath.Clean(e.GetName())
		if _, dup := rw.seen[name]; dup {
			return -1, storage.ErrDuplicatePath
		}
		rw.seen[name] = struct{}{}
	}
	e.Position = rw.pos
	rw.line = appendEntry(rw.line[:0], &e)
	if _, err := rw.w.Write(rw.line); err != nil {
		return -1, err
	}
	rw.pos++
	return e.Position, nil
}

// appendEntry encodes e as encoding/json encodes a storage.Entry (fields
// in declaration order, omitempty honoured, []byte as standard base64, a
// nil Payload as null, HTML-safe string escapes) followed by a newline, as
// json.Encoder ends every value.
func appendEntry(b []byte, e *storage.Entry) []byte {
	b = append(b, `{"type":`...)
	b = strconv.AppendInt(b, int64(e.Type), 10)
	if e.Name != "" {
		b = append(b, `,"name":`...)
		b = appendJSONString(b, e.Name)
	}
	if len(e.NameRaw) > 0 {
		b = append(b, `,"name_raw":`...)
		b = appendBase64(b, e.NameRaw)
	}
	if e.Size != 0 {
		b = append(b, `,"size":`...)
		b = strconv.AppendInt(b, e.Size, 10)
	}
	b = append(b, `,"payload":`...)
	if e.Payload == nil {
		b = append(b, "null"...)
	} else {
		b = appendBase64(b, e.Payload)
	}
	b = append(b, `,"position":`...)
	b = strconv.AppendInt(b, int64(e.Position), 10)
	return append(b, "}\n"...)
}

func appendBase64(b, p []byte) []byte {
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, p)
	return append(b, '"')
}

// appendJSONString quotes s as encoding/json does with HTML escaping on
// (json.Encoder's default): control characters, '"', '\\', '<', '>' and
// '&' escaped, invalid UTF-8 as \ufffd, U+2028 and U+2029 escaped.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// RecordReader reads a tar-split record as tar-split's
// storage.NewJSONUnpacker does, one entry per line. Lines in the form
// RecordWriter and tar-split's packer write are parsed directly; any
// other line is handed to encoding/json, so a record is read the same
// whoever wrote it, as long as it holds one JSON object per line.
type RecordReader struct {
	br      *bufio.Reader
	long    []byte // a line longer than br's buffer
	e       storage.Entry
	payload []byte
	seen    map[string]struct{}
	lines   int
}

// NewRecordReader reads entries from r.
func NewRecordReader(r io.Reader) *RecordReader {
	return &RecordReader{br: bufio.NewReaderSize(r, 256<<10), seen: map[string]struct{}{}}
}

// Next returns the next entry, or io.EOF after the last one. The entry
// and its Payload are valid until the next call. Like tar-split's
// unpacker, it refuses a second file entry with the same cleaned name
// (storage.ErrDuplicatePath).
func (rr *RecordReader) Next() (*storage.Entry, error) {
	for {
		line, err := rr.readLine()
		rr.lines++
		if len(bytes.TrimSpace(line)) == 0 {
			if err != nil {
				return nil, err
			}
			continue
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		if !rr.parse(line) {
			rr.e = storage.Entry{}
			if jerr := json.Unmarshal(line, &rr.e); jerr != nil {
				return nil, fmt.Errorf("tar-split record line %d: %w", rr.lines, jerr)
			}
		}
		if rr.e.Type == storage.FileType {
			name := filepath.Clean(rr.e.GetName())
			if _, dup := rr.seen[name]; dup {
				return nil, storage.ErrDuplicatePath
			}
			rr.seen[name] = struct{}{}
		}
		return &rr.e, nil
	}
}

// readLine returns the next line without its newline; io.EOF comes with
// the last bytes of a stream that does not end in one, or alone.
func (rr *RecordReader) readLine() ([]byte, error) {
	line, err := rr.br.ReadSlice('\n')
	if err == nil {
		return line[:len(line)-1], nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return line, err
	}
	rr.long = append(rr.long[:0], line...)
	for {
		line, err = rr.br.ReadSlice('\n')
		rr.long = append(rr.long, line...)
		if err == nil {
			return rr.long[:len(rr.long)-1], nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return rr.long, err
		}
	}
}

// parse reads a line in the exact form appendEntry writes into rr.e. It
// answers false for anything else, leaving the line to encoding/json.
func (rr *RecordReader) parse(line []byte) bool {
	p := lineParser{b: line}
	e := &rr.e
	*e = storage.Entry{}
	if !p.literal(`{"type":`) {
		return false
	}
	typ, ok := p.int()
	if !ok {
		return false
	}
	e.Type = storage.Type(typ)
	if p.literal(`,"name":`) {
		s, ok := p.plainString()
		if !ok || len(s) == 0 {
			return false
		}
		e.Name = string(s)
	}
	if p.literal(`,"name_raw":`) {
		raw, ok := p.base64(nil)
		if !ok || len(raw) == 0 {
			return false
		}
		e.NameRaw = raw
	}
	if p.literal(`,"size":`) {
		if e.Size, ok = p.int(); !ok || e.Size == 0 {
			return false
		}
	}
	if !p.literal(`,"payload":`) {
		return false
	}
	if !p.literal("null") {
		if rr.payload, ok = p.base64(rr.payload[:0]); !ok {
			return false
		}
		e.Payload = rr.payload
	}
	if !p.literal(`,"position":`) {
		return false
	}
	pos, ok := p.int()
	if !ok || pos != int64(int(pos)) {
		return false
	}
	e.Position = int(pos)
	if !p.literal("}") {
		return false
	}
	return len(bytes.TrimSpace(p.b)) == 0
}

// lineParser consumes a line from the front.
type lineParser struct{ b []byte }

func (p *lineParser) literal(s string) bool {
	if len(p.b) < len(s) || string(p.b[:len(s)]) != s {
		return false
	}
	p.b = p.b[len(s):]
	return true
}

// int reads a JSON integer without exponent or fraction, small enough
// that encoding/json would read it into an int64 too.
func (p *lineParser) int() (int64, bool) {
	i, neg := 0, false
	if i < len(p.b) && p.b[i] == '-' {
		neg = true
		i++
	}
	start := i
	for i < len(p.b) && p.b[i] >= '0' && p.b[i] <= '9' {
		i++
	}
	digits := p.b[start:i]
	if len(digits) == 0 || len(digits) > 18 || (len(digits) > 1 && digits[0] == '0') {
		return 0, false
	}
	if i < len(p.b) && (p.b[i] == '.' || p.b[i] == 'e' || p.b[i] == 'E') {
		return 0, false
	}
	var v int64
	for _, c := range digits {
		v = v*10 + int64(c-'0')
	}
	if neg {
		v = -v
	}
	p.b = p.b[i:]
	return v, true
}

// plainString reads a quoted string that needs no unescaping: valid
// UTF-8 without control characters or backslashes.
func (p *lineParser) plainString() ([]byte, bool) {
	if len(p.b) == 0 || p.b[0] != '"' {
		return nil, false
	}
	end := bytes.IndexByte(p.b[1:], '"')
	if end < 0 {
		return nil, false
	}
	s := p.b[1 : 1+end]
	ascii := true
	for _, c := range s {
		if c < 0x20 || c == '\\' {
			return nil, false
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	if !ascii && !utf8.Valid(s) {
		return nil, false
	}
	p.b = p.b[2+end:]
	return s, true
}

// base64 reads a quoted standard base64 string, appending the bytes to
// dst.
func (p *lineParser) base64(dst []byte) ([]byte, bool) {
	if len(p.b) == 0 || p.b[0] != '"' {
		return nil, false
	}
	end := bytes.IndexByte(p.b[1:], '"')
	if end < 0 {
		return nil, false
	}
	enc := p.b[1 : 1+end]
	// The decoder skips line breaks; JSON refuses them raw in a string.
	if bytes.IndexByte(enc, '\\') >= 0 || bytes.IndexByte(enc, '\r') >= 0 {
		return nil, false
	}
	out, err := base64.StdEncoding.AppendDecode(dst, enc)
	if err != nil {
		return nil, false
	}
	p.b = p.b[2+end:]
	if out == nil {
		out = []byte{}
	}
	return out, true
}
