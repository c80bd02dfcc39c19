# The embedded 2D tree mixture: endless batches drawn on the fly, nothing to download.
data = dict(train=dict(type="Tree2DStream", tree_seed=2))
