module ovnk-secondary/cni-shim

go 1.26
