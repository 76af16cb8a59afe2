// Command layerfs keeps container-image layers in a content-addressed store
// and exports them back bit for bit. Run `layerfs --help` for the commands.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/layerfs/layerfs/graph"
	"github.com/layerfs/layerfs/overlaycmd"
)

func main() {
	if overlaycmd.InvokedAs(os.Args[0]) {
		os.Exit(overlaycmd.Main(os.Args[1:], os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	app := newApp()
	err := app.RunContext(ctx, flagsFirst(app, os.Args))
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "layerfs: %v\n", explain(err))
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "layerfs",
		Usage: "a layered filesystem for container images: store, mount, commit, export",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "store", Usage: "store directory (default: /var/lib/layerfs as root, $XDG_DATA_HOME/layerfs otherwise)", EnvVars: []string{"LAYERFS_STORE"}},
			&cli.BoolFlag{Name: "debug", Usage: "log what layerfs does to stderr"},
			&cli.StringFlag{Name: "cpuprofile", Hidden: true, Usage: "write a CPU profile to FILE"},
		},
		Before: func(c *cli.Context) error {
			if p := c.String("cpuprofile"); p != "" {
				f, err := os.Create(p)
				if err != nil {
					return err
				}
				return pprof.StartCPUProfile(f)
			}
			return nil
		},
		After: func(c *cli.Context) error {
			if c.String("cpuprofile") != "" {
				pprof.StopCPUProfile()
			}
			return nil
		},
		HideHelpCommand: true,
		Commands: []*cli.Command{
			importCommand(),
			importImageCommand(),
			layersCommand(),
			imagesCommand(),
			inspectCommand(),
			treeCommand(),
			exportCommand(),
			rmCommand(),
			rmiCommand(),
			checkCommand(),
			gcCommand(),
			createCommand(),
			viewsCommand(),
			rmViewCommand(),
			mountCommand(),
			umountCommand(),
			mountsCommand(),
			diffCommand(),
			commitCommand(),
			exportImageCommand(),
			doctorCommand(),
		},
	}
}

// flagsFirst moves a command's flags before its arguments, so that
// `layerfs export ID -o FILE` works as users expect: urfave/cli stops
// parsing flags at the first argument.
func flagsFirst(app *cli.App, args []string) []string {
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" && args[i] != "--" {
		if takesValue(app.Flags, args[i]) {
			i++
		}
		i++
	}
	if i >= len(args) {
		return args
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return args
	}
	out := append([]string{}, args[:i+1]...)
	var positional []string
	rest := args[i+1:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		switch {
		case a == "--":
			positional = append(positional, rest[j:]...)
			j = len(rest)
		case strings.HasPrefix(a, "-") && a != "-":
			out = append(out, a)
			if takesValue(cmd.Flags, a) && j+1 < len(rest) {
				out = append(out, rest[j+1])
				j++
			}
		default:
			positional = append(positional, a)
		}
	}
	return append(out, positional...)
}

// takesValue reports whether arg ("-o", "--store", not "--x=v") names a
// flag that consumes the next argument.
func takesValue(flags []cli.Flag, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			_, isBool := f.(*cli.BoolFlag)
			return !isBool
		}
	}
	return false
}

func logger(c *cli.Context) *slog.Logger {
	if !c.Bool("debug") {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openStore opens the store the global flags name.
func openStore(c *cli.Context) (*graph.Store, error) {
	root := c.String("store")
	if root == "" {
		var err error
		if root, err = graph.DefaultRoot(); err != nil {
			return nil, err
		}
	}
	return graph.Open(c.Context, root, graph.Options{Logger: logger(c)})
}
