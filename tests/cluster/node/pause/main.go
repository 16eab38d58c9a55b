// Command pause is the sandbox ("pause") container of the e2e node: it holds the pod's
// namespaces, reaps the zombies a shared PID namespace leaves to it, and exits on SIGTERM or
// SIGINT. No registry is reachable here, so the image is built from this file
// (tests/cluster/build-node-tools.sh) rather than pulled.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
