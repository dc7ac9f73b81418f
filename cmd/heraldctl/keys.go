package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/herald-push/herald/router"
)

// hashKeyCmd prints the hex SHA-256 of an API key: the key_sha256 of the
// key's entry in the router's callers file. "-" reads the key from stdin,
// which keeps it out of the shell history and ps.
func hashKeyCmd(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("hash-key", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: heraldctl hash-key KEY, or heraldctl hash-key - to read the key from standard input")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: heraldctl hash-key KEY, or heraldctl hash-key - to read the key from standard input")
	}
	key := fs.Arg(0)
	if key == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			return err
		}
		key = string(b)
	}
	// The router trims the key it receives the same way.
	if key = strings.TrimSpace(key); key == "" {
		return errors.New("hash-key: the key is empty")
	}
	_, err := fmt.Fprintln(stdout, router.HashKey(key))
	return err
}
