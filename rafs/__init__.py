"""On-disk formats of Nydus images: RAFS v5/v6 bootstraps and their data blobs."""
