package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/graph"
	"github.com/layerfs/layerfs/ociimage"
)

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON"}

// newBar returns a byte progress bar on stderr, or nil when stderr is not a
// terminal (then nothing extra is printed).
func newBar(total int64, what string) *progressbar.ProgressBar {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetDescription(what),
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	)
}

// progress counts what is read from r on a progress bar.
func progress(r io.Reader, total int64, what string) (io.Reader, func()) {
	bar := newBar(total, what)
	if bar == nil {
		return r, func() {}
	}
	pr := progressbar.NewReader(r, bar)
	return &pr, func() { bar.Finish() }
}

// progressWriter counts what is written to w on a progress bar.
func progressWriter(w io.Writer, total int64, what string) (io.Writer, func()) {
	bar := newBar(total, what)
	if bar == nil {
		return w, func() {}
	}
	return io.MultiWriter(w, bar), func() { bar.Finish() }
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func short(d digest.Digest) string {
	if len(d.Encoded()) < 12 {
		return d.String()
	}
	return d.Encoded()[:12]
}

func importCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "register a layer tar (plain, gzip, zstd, bzip2 or xz) and print its chain ID",
		ArgsUsage: "FILE|-",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "parent", Usage: "ID (or unique prefix) of the layer below"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("import: want one FILE or - for stdin")
			}
			if c.IsSet("parent") && c.String("parent") == "" {
				return fmt.Errorf("import: --parent is empty")
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			name := c.Args().First()
			if name == "-" && term.IsTerminal(int(os.Stdin.Fd())) {
				return fmt.Errorf("import: stdin is a terminal; pipe a tar into it or name a FILE")
			}
			var in io.Reader = os.Stdin
			total := int64(-1)
			if name != "-" {
				f, err := os.Open(name)
				if err != nil {
					return fmt.Errorf("import: %w", err)
				}
				defer f.Close()
				if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
					total = st.Size()
				}
				in = f
			}
			r, done := progress(in, total, "importing")
			l, existed, err := s.Register(c.Context, r, graph.RegisterOptions{Parent: c.String("parent")})
			done()
			if err != nil {
				return fmt.Errorf("import %s: %w", name, err)
			}
			if existed {
				fmt.Fprintf(c.App.ErrWriter, "layer already stored\n")
			}
			fmt.Fprintln(c.App.Writer, l.ChainID)
			return nil
		},
	}
}

func importImageCommand() *cli.Command {
	return &cli.Command{
		Name:      "import-image",
		Usage:     "import an OCI layout directory, oci-archive or docker-archive and print the image ID",
		ArgsUsage: "PATH",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "name", Usage: "NAME:TAG to record (replaces the archive's names)"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("import-image: want one PATH")
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			var finish []func()
			wrap := func(l ociimage.Layer, r io.Reader) io.Reader {
				pr, done := progress(r, l.Size, "layer "+short(l.Digest))
				finish = append(finish, done)
				return pr
			}
			images, err := s.ImportImage(c.Context, c.Args().First(), graph.ImportImageOptions{Name: c.String("name"), WrapLayer: wrap})
			for _, f := range finish {
				f()
			}
			if err != nil {
				return err
			}
			for _, img := range images {
				fmt.Fprintln(c.App.Writer, img.ID)
			}
			return nil
		},
	}
}

func layersCommand() *cli.Command {
	return &cli.Command{
		Name:  "layers",
		Usage: "list the stored layers",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			layers, err := s.Layers()
			if err != nil {
				return err
			}
			sort.Slice(layers, func(i, j int) bool { return layers[i].Created.Before(layers[j].Created) })
			if c.Bool("json") {
				if layers == nil {
					layers = []*graph.Layer{}
				}
				return printJSON(c.App.Writer, layers)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CHAIN ID\tPARENT\tDIFF ID\tSIZE\tCREATED")
			for _, l := range layers {
				parent := "-"
				if l.Parent != "" {
					parent = short(l.Parent)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", short(l.ChainID), parent, short(l.DiffID), humanSize(l.Size), l.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}

func imagesCommand() *cli.Command {
	return &cli.Command{
		Name:  "images",
		Usage: "list the stored images",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			images, err := s.Images()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if images == nil {
					images = []*graph.Image{}
				}
				return printJSON(c.App.Writer, images)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE ID\tLAYERS\tCREATED")
			for _, img := range images {
				names := img.Names
				if len(names) == 0 {
					names = []string{"<none>"}
				}
				for _, n := range names {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", n, short(img.ID), len(img.Layers), img.Created.Local().Format(time.DateTime))
				}
			}
			return tw.Flush()
		},
	}
}

// inspected is what inspect prints for a layer.
type inspected struct {
	*graph.Layer
	DiskUsage int64    `json:"diskUsage"`
	Children  []string `json:"children"`
	UsedBy    []string `json:"usedBy"`
	Path      string   `json:"path"`
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "print a layer's or an image's record as JSON",
		ArgsUsage: "ID|NAME",
		Flags: []cli.Flag{&cli.StringFlag{Name: "format", Aliases: []string{"f"},
			Usage: "render with a Go template over the JSON keys, e.g. '{{.diffID}}' or '{{range .config.rootfs.diff_ids}}{{.}} {{end}}'"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("inspect: want one ID or NAME")
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			ref := c.Args().First()
			l, lerr := s.Layer(ref)
			img, ierr := s.Image(ref)
			if ierr == nil && img.HasName(ref) {
				lerr = graph.ErrNotFound
			}
			switch {
			case lerr == nil && ierr == nil:
				return fmt.Errorf("inspect %q: names both layer %s and image %s; give more of the ID", ref, l.ChainID, img.ID)
			case lerr == nil:
				du, err := s.DiskUsage(l.ChainID)
				if err != nil {
					return err
				}
				children, err := s.Children(l.ChainID)
				if err != nil {
					return err
				}
				users, err := s.Users(l.ChainID)
				if err != nil {
					return err
				}
				out := inspected{Layer: l, DiskUsage: du, Children: []string{}, UsedBy: users, Path: s.DiffDir(l.ChainID)}
				for _, ch := range children {
					out.Children = append(out.Children, ch.ChainID.String())
				}
				if out.UsedBy == nil {
					out.UsedBy = []string{}
				}
				return printInspected(c, out)
			case ierr == nil:
				cfg, err := s.ImageConfig(img.ID)
				if err != nil {
					return err
				}
				return printInspected(c, struct {
					*graph.Image
					Config json.RawMessage `json:"config"`
				}{img, cfg})
			case errors.Is(lerr, graph.ErrNotFound):
				return ierr
			}
			return lerr
		},
	}
}

// printInspected prints v as JSON, or through the --format template applied
// to v's JSON form (so templates use the keys users see).
func printInspected(c *cli.Context, v any) error {
	format := c.String("format")
	if format == "" {
		return printJSON(c.App.Writer, v)
	}
	tmpl, err := template.New("format").Option("missingkey=error").Parse(format)
	if err != nil {
		return fmt.Errorf("inspect --format: %w", err)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var generic any
	if err := json.Unmarshal(data, &generic); err != nil {
		return err
	}
	if err := tmpl.Execute(c.App.Writer, generic); err != nil {
		return fmt.Errorf("inspect --format: %w", err)
	}
	fmt.Fprintln(c.App.Writer)
	return nil
}

func treeCommand() *cli.Command {
	return &cli.Command{
		Name:  "tree",
		Usage: "draw the layer graph; heads are marked with *",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			layers, err := s.Layers()
			if err != nil {
				return err
			}
			images, err := s.Images()
			if err != nil {
				return err
			}
			return drawTree(c.App.Writer, layers, images, c.Bool("json"))
		},
	}
}

type treeNode struct {
	ChainID  digest.Digest `json:"chainID"`
	Head     bool          `json:"head"`
	Images   []string      `json:"images,omitempty"`
	Children []*treeNode   `json:"children"`
}

func drawTree(w io.Writer, layers []*graph.Layer, images []*graph.Image, asJSON bool) error {
	nodes := map[digest.Digest]*treeNode{}
	for _, l := range layers {
		nodes[l.ChainID] = &treeNode{ChainID: l.ChainID, Children: []*treeNode{}}
	}
	for _, img := range images {
		if n := nodes[img.Top()]; n != nil {
			n.Images = append(n.Images, img.DisplayNames()...)
		}
	}
	roots := []*treeNode{}
	for _, l := range layers {
		n := nodes[l.ChainID]
		if p := nodes[l.Parent]; p != nil {
			p.Children = append(p.Children, n)
		} else {
			roots = append(roots, n)
		}
	}
	for _, n := range nodes {
		n.Head = len(n.Children) == 0
	}
	if asJSON {
		return printJSON(w, roots)
	}
	var walk func(n *treeNode, prefix string, last bool, top bool)
	walk = func(n *treeNode, prefix string, last, top bool) {
		branch, next := "├── ", "│   "
		if last {
			branch, next = "└── ", "    "
		}
		if top {
			branch, next = "", ""
		}
		mark := ""
		if n.Head {
			mark = " *"
		}
		if len(n.Images) > 0 {
			mark += " (" + strings.Join(n.Images, ", ") + ")"
		}
		fmt.Fprintf(w, "%s%s%s%s\n", prefix, branch, n.ChainID, mark)
		for i, ch := range n.Children {
			walk(ch, prefix+next, i == len(n.Children)-1, false)
		}
	}
	for _, r := range roots {
		walk(r, "", true, true)
	}
	return nil
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write a layer's original tar, bit for bit (checked against its diffID)",
		ArgsUsage: "ID",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to FILE instead of stdout"},
			&cli.StringFlag{Name: "compress", Value: "none", Usage: "none, gzip or zstd"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("export: want one layer ID")
			}
			format, err := compression.ParseFormat(c.String("compress"))
			if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			l, err := s.Layer(c.Args().First())
			if err != nil {
				return err
			}
			out := c.String("output")
			if out == "" {
				if term.IsTerminal(int(os.Stdout.Fd())) {
					return fmt.Errorf("export: refusing to write a tar to a terminal; use -o FILE or a pipe")
				}
				w, done := progressWriter(os.Stdout, l.TarSize, "exporting")
				_, err = s.Export(c.Context, l.ChainID.String(), w, format)
				done()
				return err
			}
			// A file appears only once complete and verified.
			tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".part-*")
			if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			defer os.Remove(tmp.Name())
			w, done := progressWriter(tmp, l.TarSize, "exporting")
			_, err = s.Export(c.Context, l.ChainID.String(), w, format)
			done()
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Chmod(tmp.Name(), 0o644); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			if err := os.Rename(tmp.Name(), out); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			return nil
		},
	}
}

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove layers nothing uses (no child layer, image, view or mount)",
		ArgsUsage: "ID...",
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			return eachArg(c, "rm", func(ref string) (string, error) {
				id, err := s.DeleteLayer(c.Context, ref)
				return id.String(), err
			})
		},
	}
}

func rmiCommand() *cli.Command {
	return &cli.Command{
		Name:      "rmi",
		Usage:     "remove image names; an image goes with its last name (its layers stay until rm)",
		ArgsUsage: "NAME|ID...",
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			return eachArg(c, "rmi", func(ref string) (string, error) {
				img, gone, err := s.DeleteImage(c.Context, ref)
				if err != nil {
					return "", err
				}
				if gone {
					return "deleted: " + img.ID.String(), nil
				}
				return "untagged: " + ref, nil
			})
		},
	}
}

// eachArg runs fn on every argument, printing what it returns, reporting
// each failure on stderr and going on; it fails at the end if any failed.
func eachArg(c *cli.Context, verb string, fn func(ref string) (string, error)) error {
	if c.NArg() == 0 {
		return fmt.Errorf("%s: want at least one argument", verb)
	}
	failed := 0
	for _, ref := range c.Args().Slice() {
		out, err := fn(ref)
		if err != nil {
			fmt.Fprintf(c.App.ErrWriter, "layerfs: %s %s: %v\n", verb, ref, err)
			failed++
			continue
		}
		fmt.Fprintln(c.App.Writer, out)
	}
	if failed > 0 {
		return fmt.Errorf("%s: %d of %d failed", verb, failed, c.NArg())
	}
	return nil
}

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "re-verify every layer and image; exit 1 and list the problems if any",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			var bar *progressbar.ProgressBar
			var report graph.CheckProgress
			if term.IsTerminal(int(os.Stderr.Fd())) {
				report = func(l *graph.Layer, i, n int) {
					if bar == nil {
						bar = progressbar.NewOptions(n, progressbar.OptionSetWriter(os.Stderr),
							progressbar.OptionSetDescription("checking layers"), progressbar.OptionClearOnFinish())
					}
					bar.Set(i)
				}
			}
			problems, err := s.Check(c.Context, report)
			if bar != nil {
				bar.Finish()
			}
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if problems == nil {
					problems = []graph.Problem{}
				}
				if err := printJSON(c.App.Writer, problems); err != nil {
					return err
				}
			} else {
				for _, p := range problems {
					fmt.Fprintln(c.App.Writer, p)
				}
			}
			if len(problems) > 0 {
				return cli.Exit(fmt.Sprintf("layerfs: check found %d problem(s)", len(problems)), 1)
			}
			if !c.Bool("json") {
				fmt.Fprintln(c.App.Writer, "store is consistent")
			}
			return nil
		},
	}
}

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "remove leftovers of dead processes and directories without a valid record",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			s, err := openStore(c)
			if err != nil {
				return err
			}
			removed, err := s.GC(c.Context)
			if c.Bool("json") {
				if removed == nil {
					removed = []string{}
				}
				if jerr := printJSON(c.App.Writer, removed); jerr != nil {
					return jerr
				}
			} else {
				for _, r := range removed {
					fmt.Fprintf(c.App.Writer, "removed %s\n", r)
				}
			}
			return err
		},
	}
}

func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func exportImageCommand() *cli.Command {
	return &cli.Command{
		Name:      "export-image",
		Usage:     "write an image as an OCI layout directory, an oci-archive or a docker-archive",
		ArgsUsage: "IMAGE DIR|FILE",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: "oci", Usage: "oci (a layout directory), oci-archive or docker"},
			&cli.StringFlag{Name: "compress", Value: "gzip", Usage: "layer compression for oci formats: gzip, zstd or none"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return fmt.Errorf("export-image: want IMAGE and a target DIR or FILE")
			}
			format, err := compression.ParseFormat(c.String("compress"))
			if err != nil {
				return fmt.Errorf("export-image: %w", err)
			}
			s, err := openStore(c)
			if err != nil {
				return err
			}
			img, err := s.ExportImage(c.Context, c.Args().First(), graph.ExportImageFormat(c.String("format")), c.Args().Get(1), format)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, img.ID)
			return nil
		},
	}
}
