// Command layerfs keeps container-image layers in a content-addressed store
// and exports them back bit for bit. Run `layerfs --help` for the commands.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/layerfs/layerfs/graph"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp().RunContext(ctx, os.Args)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "layerfs: %v\n", err)
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
		},
	}
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
