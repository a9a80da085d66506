package main

import (
	"container/list"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/ignore"
)

// maxChartBytes bounds the files of one chart folder the cache reads; the operator's export has
// already refused larger trees, this only keeps a mistake from filling memory.
const maxChartBytes = 64 << 20

// chartCache keeps the files of each exported chart folder in memory. The operator exports a
// chart once per git tree into a folder named after the tree id, so a folder's contents never
// change and one read serves every release of that tree. A fresh chart is built from the files
// for each request, because Helm's dependency processing edits the chart it is given.
type chartCache struct {
	mu      sync.Mutex
	limit   int
	order   *list.List
	entries map[string]*list.Element
}

type chartEntry struct {
	dir   string
	files []*archive.BufferedFile
}

func newChartCache(limit int) *chartCache {
	return &chartCache{limit: limit, order: list.New(), entries: map[string]*list.Element{}}
}

// Load returns a chart built from the cached files of dir, reading dir on first use.
func (c *chartCache) Load(dir string) (*chart.Chart, error) {
	files, err := c.files(dir)
	if err != nil {
		return nil, err
	}
	return loader.LoadFiles(files)
}

func (c *chartCache) files(dir string) ([]*archive.BufferedFile, error) {
	c.mu.Lock()
	if e, ok := c.entries[dir]; ok {
		c.order.MoveToFront(e)
		files := e.Value.(*chartEntry).files
		c.mu.Unlock()
		return files, nil
	}
	c.mu.Unlock()
	files, err := readChartDir(dir)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[dir]; !ok {
		c.entries[dir] = c.order.PushFront(&chartEntry{dir: dir, files: files})
		for c.order.Len() > c.limit {
			oldest := c.order.Back()
			c.order.Remove(oldest)
			delete(c.entries, oldest.Value.(*chartEntry).dir)
		}
	}
	return files, nil
}

// readChartDir reads a chart folder as Helm's LoadDir does: .helmignore and Helm's default
// ignores apply, symbolic links are not followed.
func readChartDir(dir string) ([]*archive.BufferedFile, error) {
	top, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	rules := ignore.Empty()
	if _, err := os.Stat(filepath.Join(top, ignore.HelmIgnore)); err == nil {
		if rules, err = ignore.ParseFile(filepath.Join(top, ignore.HelmIgnore)); err != nil {
			return nil, err
		}
	}
	rules.AddDefaults()
	var files []*archive.BufferedFile
	var total int64
	err = filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(top, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rules.Ignore(rel, info) {
				return filepath.SkipDir
			}
			return nil
		}
		if rules.Ignore(rel, info) || !info.Mode().IsRegular() {
			return nil
		}
		total += info.Size()
		if total > maxChartBytes {
			return fs.ErrInvalid
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files = append(files, &archive.BufferedFile{Name: rel, Data: data})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return files, nil
}
