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
}

func (rc *recorder) Read(p []byte) (int, error) {
	n, err := rc.r.Read(p)
	if n > 0 {
		data := p[:n]
		rc.total += int64(n)
		if rc.inPayload {
			rc.work.payload(data)
			rc.payload += int64(n)
		} else {
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
	tr  *tar.Reader
	cur *tar.Header
	// curFragments is the data map of the current entry when it is sparse.
	curFragments []Fragment
	done         bool
	diffID       digest.Digest
}

// NewSplitter wraps an uncompressed tar stream.
func NewSplitter(r io.Reader, packer storage.Packer) *Splitter {
	rec := &recorder{r: r, work: newPackWorker(packer)}
	return &Splitter{rec: rec, tr: tar.NewReader(rec)}
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
	hdr, err := s.tr.Next()
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
	return s.tr.Read(p)
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
	if _, err := io.Copy(io.Discard, s.tr); err != nil {
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
	const chunk = 1 << 20
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
