// Command etcd is upstream etcd's server main, built from the Go module proxy.
//
// It is its own Go module because k8s.io/kubernetes v1.37.2 pulls the etcd 3.7
// libraries, while the pinned server is 3.6.x.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
