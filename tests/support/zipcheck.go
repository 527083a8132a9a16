// Command zipcheck reads a zip with Go's archive/zip and reports what it saw.
//
// Usage: zipcheck list|read ARCHIVE.zip
//
//	list: central directory only (zip.OpenReader parses it; no member data is read);
//	read: every member opened and read to the end (archive/zip checks the CRC-32 itself).
//
// Output: one line per entry, ENTRY <tab> size <tab> crc32-hex <tab> name-as-utf8-hex, then OK <count>.
// Exit 0 on success, 1 with "ERROR message" on stderr when archive/zip refuses the archive, 2 on bad usage.
package main

import (
	"archive/zip"
	"bufio"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "list" && os.Args[1] != "read") {
		fmt.Fprintln(os.Stderr, "usage: zipcheck list|read ARCHIVE.zip")
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	count, err := check(os.Args[1] == "read", os.Args[2], out)
	out.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR "+err.Error())
		os.Exit(1)
	}
	fmt.Printf("OK %d\n", count)
}

func check(read bool, path string, out io.Writer) (int, error) {
	archive, err := zip.OpenReader(path)
	if err != nil {
		return 0, err
	}
	defer archive.Close()
	for _, f := range archive.File {
		size, crc := f.UncompressedSize64, f.CRC32
		if read && !f.FileInfo().IsDir() {
			rc, err := f.Open()
			if err != nil {
				return 0, fmt.Errorf("%s: %w", f.Name, err)
			}
			hash := crc32.NewIEEE()
			n, err := io.Copy(hash, rc)
			rc.Close()
			if err != nil { // includes zip.ErrChecksum and zip.ErrFormat
				return 0, fmt.Errorf("%s: %w", f.Name, err)
			}
			size, crc = uint64(n), hash.Sum32()
		}
		fmt.Fprintf(out, "ENTRY\t%d\t%x\t%s\n", size, crc, hex.EncodeToString([]byte(f.Name)))
	}
	return len(archive.File), nil
}
