"""Building speech corpora offline and importing common corpus layouts into manifests."""
