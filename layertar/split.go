// Package layertar records a layer tar's bytes with vbatts/tar-split while
// the tar is applied, and reassembles the tar, bit for bit, from that record
// and the files of the applied layer.
//
// It writes tar-split's own metadata format (storage.Entry lines: raw
// segments and file entries with a crc64 of their payload), so the record
// reads with tar-split's tools, with one extension that tar-split lacks:
// sparse files. tar-split's own disassembler records a sparse entry's
// expanded content and so cannot reproduce the packed bytes. Here a file
// entry's Size and crc64 cover the bytes physically present in the archive
// (for a sparse file, its data fragments), and the fragment map is read
// back from the entry's raw header segment when the tar is reassembled.
package layertar

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"
)

// MaxSparseSize bounds the logical size of a sparse entry. Its holes cost
// no space but are read as zeros: a tar claiming petabytes of hole would
// keep an import busy for days.
const MaxSparseSize = 1 << 40

// recorder sits under the tar reader and sees every byte of the stream. It
// keeps raw bytes as the current segment (the splitter reads sparse maps
// and the end-of-archive block from it) or, while an entry's payload is
// being read, hands them to the pack worker to be hashed.
type recorder struct {
	r         io.Reader
	work      *packWorker
	total     int64
	segment   bytes.Buffer
	inPayload bool
	payload   int64
	// inPlace is the batch room a ReadChunk reads into: a payload read
	// into it is recorded where it lies.
	inPlace []byte
}

func (rc *recorder) Read(p []byte) (int, error) {
	if rc.inPlace != nil && len(p) > 0 && (!rc.inPayload || &p[0] != &rc.inPlace[0] || len(p) > len(rc.inPlace)) {
		// archive/tar hands a plain entry's reads through unchanged;
		// anything else would have the recording overwrite the bytes
		// handed out.
		return 0, errors.New("layertar: internal error: in-place read of a payload not at the start of the room given")
	}
	n, err := rc.r.Read(p)
	if n > 0 {
		data := p[:n]
		rc.total += int64(n)
		switch {
		case rc.inPlace != nil:
			rc.work.payloadInPlace(n)
			rc.inPlace = rc.inPlace[n:]
			rc.payload += int64(n)
		case rc.inPayload:
			rc.work.payload(data)
			rc.payload += int64(n)
		default:
			rc.segment.Write(data)
		}
	}
	return n, err
}

// Splitter reads a tar stream entry by entry, like archive/tar's Reader,
// and records it into a tar-split packer as it goes. It satisfies the
// applier's Source interface.
type Splitter struct {
	rec *recorder
	// tr reads the current entry when archive/tar parsed its headers;
	// nil when parseHeader did, and remain is then what is left of its
	// content.
	tr     *tar.Reader
	remain int64
	blk    [blockSize]byte
	cur    *tar.Header
	// curFragments is the data map of the current entry when it is sparse.
	curFragments []Fragment
	done         bool
	diffID       digest.Digest
	own          []byte // ReadChunk's buffer for sparse entries
}

// NewSplitter wraps an uncompressed tar stream.
func NewSplitter(r io.Reader, packer storage.Packer) *Splitter {
	rec := &recorder{r: r, work: newPackWorker(packer)}
	return &Splitter{rec: rec}
}

// Next finishes the current entry (reading what the caller left of its
// payload) and advances to the next one. It returns io.EOF after the last
// entry, once the whole stream, trailing padding included, was recorded.
func (s *Splitter) Next() (*tar.Header, error) {
	if s.done {
		return nil, io.EOF
	}
	if err := s.finishEntry(); err != nil {
		return nil, err
	}
	hdr, err := s.next()
	if errors.Is(err, io.EOF) {
		return nil, s.finishStream()
	}
	if err != nil {
		if s.cur != nil {
			return nil, fmt.Errorf("read tar header after %q: %w", s.cur.Name, err)
		}
		return nil, fmt.Errorf("read tar header: %w", err)
	}
	raw := s.rec.segment.Bytes()
	frags, sparse, err := ParseSparse(raw, s.rec.total-int64(len(raw)))
	if err != nil {
		return nil, fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if err := s.flushSegment(); err != nil {
		return nil, err
	}
	if sparse && hdr.Size > MaxSparseSize {
		return nil, fmt.Errorf("tar entry %q: sparse file claims %d bytes, more than the %d a layer may hold", hdr.Name, hdr.Size, int64(MaxSparseSize))
	}
	s.cur = hdr
	s.curFragments = nil
	if sparse {
		s.curFragments = frags
	}
	s.rec.inPayload = true
	s.rec.payload = 0
	return hdr, nil
}

// Read reads the current entry's content (a sparse file's holes read as
// zeros).
func (s *Splitter) Read(p []byte) (int, error) {
	if s.cur == nil {
		return 0, io.EOF
	}
	if s.tr != nil {
		return s.tr.Read(p)
	}
	return s.readContent(p)
}

// next reads the next entry's headers: a plain one itself, anything else
// (extension headers, sparse files, the end of the archive, a short or a
// bad block) with archive/tar.
func (s *Splitter) next() (*tar.Header, error) {
	// Headers start on block boundaries: skip the previous entry's
	// padding.
	if pad := (blockSize - s.rec.total%blockSize) % blockSize; pad > 0 {
		if _, err := io.ReadFull(s.rec, s.blk[:pad]); err != nil {
			// As archive/tar: a stream that ends in the padding ends
			// there, and finishStream says it is truncated.
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			return nil, err
		}
	}
	n, err := io.ReadFull(s.rec, s.blk[:])
	if err == nil {
		if hdr, ok := parseHeader(&s.blk); ok {
			s.tr = nil
			s.remain = contentSize(hdr)
			return hdr, nil
		}
	}
	s.tr = tar.NewReader(io.MultiReader(bytes.NewReader(s.blk[:n]), s.rec))
	return s.tr.Next()
}

// readContent reads the content of an entry parseHeader read, as
// archive/tar reads a plain file's.
func (s *Splitter) readContent(p []byte) (int, error) {
	if int64(len(p)) > s.remain {
		p = p[:s.remain]
	}
	var n int
	var err error
	if len(p) > 0 {
		n, err = s.rec.Read(p)
		s.remain -= int64(n)
	}
	switch {
	case err == io.EOF && s.remain > 0:
		return n, io.ErrUnexpectedEOF
	case err == nil && s.remain == 0:
		return n, io.EOF
	}
	return n, err
}

// minChunk is the least room a ReadChunk reads into: less left in the
// pack worker's batch, and the batch is handed over first.
const minChunk = 64 << 10

// ReadChunk returns the next bytes of the current entry's content like
// Read, but in a buffer of the Splitter's: a plain file's content is read
// straight into the batch that the pack worker hashes, which saves
// copying it. The bytes must not be changed, and are valid until the
// next call of Next, Read or ReadChunk. It returns io.EOF at the end of
// the content.
func (s *Splitter) ReadChunk() ([]byte, error) {
	if s.cur == nil {
		return nil, io.EOF
	}
	if s.tr != nil && (s.curFragments != nil || mayBeSparse(s.cur)) {
		// archive/tar reads a sparse file's fragments into parts of the
		// buffer and fills the holes itself.
		if s.own == nil {
			s.own = make([]byte, 1<<20)
		}
		n, err := s.tr.Read(s.own)
		return s.own[:n], err
	}
	room := s.rec.work.space(minChunk)
	if s.tr == nil {
		room = room[:min(int64(len(room)), s.remain)]
	}
	s.rec.inPlace = room
	var n int
	var err error
	if s.tr != nil {
		n, err = s.tr.Read(room)
	} else {
		n, err = s.readContent(room)
	}
	s.rec.inPlace = nil
	return room[:n], err
}

// mayBeSparse tells whether archive/tar may read hdr's content as a
// sparse file: a GNU sparse entry or any GNU sparse PAX record.
func mayBeSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// DiffID is the sha256 of the whole stream, the layer's diffID. Call it
// once Next has returned io.EOF; it ends the hashing.
func (s *Splitter) DiffID() digest.Digest { return s.diffID }

// Close releases the pack worker of a stream that was not read to its
// end. It is safe to call after the end.
func (s *Splitter) Close() { s.rec.work.finish() }

// Size is the number of uncompressed bytes read so far.
func (s *Splitter) Size() int64 { return s.rec.total }

func (s *Splitter) finishEntry() error {
	if s.cur == nil {
		return nil
	}
	// The payload must be consumed in payload mode; letting tar.Reader skip
	// it would lump data and padding into one raw segment.
	if _, err := io.Copy(io.Discard, contentReader{s}); err != nil {
		return fmt.Errorf("read %q: %w", s.cur.Name, err)
	}
	s.rec.inPayload = false
	if s.curFragments != nil {
		var sum int64
		for _, f := range s.curFragments {
			sum += f.Length
		}
		if sum != s.rec.payload {
			return fmt.Errorf("sparse entry %q: map covers %d bytes, archive holds %d", s.cur.Name, sum, s.rec.payload)
		}
	}
	s.rec.work.file(s.cur.Name, s.rec.payload)
	s.cur = nil
	return s.rec.work.failure()
}

func (s *Splitter) flushSegment() error {
	if s.rec.segment.Len() == 0 {
		return nil
	}
	s.rec.work.segment(s.rec.segment.Bytes())
	s.rec.segment.Reset()
	return s.rec.work.failure()
}

// finishStream records the end-of-archive blocks and whatever padding
// follows them (tar writers pad to their record size, some append more).
func (s *Splitter) finishStream() error {
	s.done = true
	// archive/tar reports io.EOF for a stream cut anywhere at or after an
	// entry's data; only the end-of-archive block proves it is complete.
	start := s.rec.total - int64(s.rec.segment.Len())
	skip := (blockSize - start%blockSize) % blockSize
	if int64(s.rec.segment.Len())-skip < blockSize {
		if s.rec.total == 0 {
			return fmt.Errorf("the stream is empty, not a tar")
		}
		return fmt.Errorf("the tar is truncated: it ends without an end-of-archive block")
	}
	const chunk = batchBytes
	buf := make([]byte, 32<<10)
	for {
		_, err := s.rec.Read(buf)
		if s.rec.segment.Len() >= chunk {
			if ferr := s.flushSegment(); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar trailer: %w", err)
		}
	}
	if err := s.flushSegment(); err != nil {
		return err
	}
	sum, err := s.rec.work.finish()
	if err != nil {
		return err
	}
	s.diffID = digest.NewDigestFromBytes(digest.SHA256, sum)
	return io.EOF
}

// contentReader is the Splitter's Read alone, so that io.Copy neither
// sees ReadChunk nor anything else.
type contentReader struct{ s *Splitter }

func (c contentReader) Read(p []byte) (int, error) { return c.s.Read(p) }
