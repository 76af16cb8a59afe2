package layertar

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/layerfs/layerfs/layertar/internal/crc64iso"
)

// packWorker runs tar-split's packer, the diffID's sha256 and the
// payloads' crc64 on a goroutine of its own, fed in batches: for a layer
// of small files the record's JSON and gzip cost more CPU than parsing the
// tar, for large files the two hashes do, and either way the applier's
// goroutine is left with parsing and system calls.
type packWorker struct {
	packer  storage.Packer
	batches chan *batch
	free    chan *batch
	cur     *batch
	made    int // batches allocated, at most maxBatches
	done    chan struct{}
	failed  atomic.Bool
	err     error // written by the worker, read after done or failed
	sum     []byte
	ended   bool
}

type opKind uint8

const (
	opSegment opKind = iota // raw bytes: one SegmentType entry
	opPayload               // payload bytes of the current entry
	opFile                  // end of an entry: one FileType entry
)

type op struct {
	kind     opKind
	off, end int
	name     string
	size     int64
}

type batch struct {
	buf []byte
	ops []op
}

const (
	// batchBytes: payloads are read into batches and written out from
	// them, then hashed; 256 KiB stays in the caches where 1 MiB did not.
	batchBytes = 256 << 10
	batchOps   = 4096
	// maxBatches: one being filled, one being worked on, two queued.
	maxBatches = 4
)

func newPackWorker(p storage.Packer) *packWorker {
	w := &packWorker{packer: p, batches: make(chan *batch, maxBatches-2), free: make(chan *batch, maxBatches), done: make(chan struct{})}
	w.cur = w.newBatch()
	go w.run()
	return w
}

// newBatch returns a free batch, allocating one while fewer than
// maxBatches exist: a small tar never costs more than one or two.
func (w *packWorker) newBatch() *batch {
	select {
	case b := <-w.free:
		return b
	default:
	}
	if w.made < maxBatches {
		w.made++
		return &batch{buf: make([]byte, 0, batchBytes)}
	}
	return <-w.free
}

func (w *packWorker) run() {
	defer close(w.done)
	sha := sha256.New()
	var crc uint64 // of the current entry's payload
	for b := range w.batches {
		for _, o := range b.ops {
			if w.err != nil {
				break
			}
			data := b.buf[o.off:o.end]
			switch o.kind {
			case opSegment:
				sha.Write(data)
				// The JSON packer encodes the entry before it returns.
				if _, err := w.packer.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: data}); err != nil {
					w.fail(fmt.Errorf("record tar segment: %w", err))
				}
			case opPayload:
				sha.Write(data)
				crc = crc64iso.Update(crc, data)
			case opFile:
				e := storage.Entry{Type: storage.FileType, Size: o.size}
				if o.size > 0 {
					e.Payload = binary.BigEndian.AppendUint64(nil, crc)
				}
				e.SetName(o.name)
				if _, err := w.packer.AddEntry(e); err != nil {
					w.fail(fmt.Errorf("record %q: %w", o.name, err))
				}
				crc = 0
			}
		}
		b.buf, b.ops = b.buf[:0], b.ops[:0]
		w.free <- b
	}
	w.sum = sha.Sum(nil)
}

func (w *packWorker) fail(err error) {
	w.err = err
	w.failed.Store(true)
}

// failure returns the worker's error, if it has failed yet.
func (w *packWorker) failure() error {
	if w.failed.Load() {
		return w.err
	}
	return nil
}

func (w *packWorker) flush() {
	if len(w.cur.ops) == 0 {
		return
	}
	w.batches <- w.cur
	w.cur = w.newBatch()
}

// segment records raw bytes as one segment (copied).
func (w *packWorker) segment(p []byte) {
	if cap(w.cur.buf)-len(w.cur.buf) < len(p) || len(w.cur.ops) >= batchOps {
		w.flush()
		if cap(w.cur.buf) < len(p) {
			w.cur.buf = make([]byte, 0, len(p))
		}
	}
	off := len(w.cur.buf)
	w.cur.buf = append(w.cur.buf, p...)
	w.cur.ops = append(w.cur.ops, op{kind: opSegment, off: off, end: len(w.cur.buf)})
}

// payload hashes payload bytes (copied).
func (w *packWorker) payload(p []byte) {
	for len(p) > 0 {
		room := cap(w.cur.buf) - len(w.cur.buf)
		if room == 0 || len(w.cur.ops) >= batchOps {
			w.flush()
			room = cap(w.cur.buf) - len(w.cur.buf)
		}
		k := min(room, len(p))
		off := len(w.cur.buf)
		w.cur.buf = append(w.cur.buf, p[:k]...)
		if n := len(w.cur.ops); n > 0 && w.cur.ops[n-1].kind == opPayload && w.cur.ops[n-1].end == off {
			w.cur.ops[n-1].end = len(w.cur.buf)
		} else {
			w.cur.ops = append(w.cur.ops, op{kind: opPayload, off: off, end: len(w.cur.buf)})
		}
		p = p[k:]
	}
}

// space returns the free room of the current batch, at least minRoom
// bytes, for payload bytes to be read into in place and recorded with
// payloadInPlace: no copy is made. The room stays the caller's until its
// next call of a packWorker method.
func (w *packWorker) space(minRoom int) []byte {
	if cap(w.cur.buf)-len(w.cur.buf) < minRoom || len(w.cur.ops) >= batchOps {
		w.flush()
	}
	return w.cur.buf[len(w.cur.buf):cap(w.cur.buf)]
}

// payloadInPlace records the first n bytes of the room space returned as
// payload.
func (w *packWorker) payloadInPlace(n int) {
	off := len(w.cur.buf)
	w.cur.buf = w.cur.buf[:off+n]
	if k := len(w.cur.ops); k > 0 && w.cur.ops[k-1].kind == opPayload && w.cur.ops[k-1].end == off {
		w.cur.ops[k-1].end = len(w.cur.buf)
	} else {
		w.cur.ops = append(w.cur.ops, op{kind: opPayload, off: off, end: len(w.cur.buf)})
	}
}

// file ends the current entry.
func (w *packWorker) file(name string, size int64) {
	if len(w.cur.ops) >= batchOps {
		w.flush()
	}
	w.cur.ops = append(w.cur.ops, op{kind: opFile, off: len(w.cur.buf), end: len(w.cur.buf), name: name, size: size})
}

// finish waits for everything to be recorded and returns the sha256 of
// the stream.
func (w *packWorker) finish() ([]byte, error) {
	if !w.ended {
		w.ended = true
		if len(w.cur.ops) > 0 {
			w.batches <- w.cur
		}
		w.cur = nil
		close(w.batches)
	}
	<-w.done
	return w.sum, w.err
}
