# The embedded 2D tree mixture: endless batches drawn on the fly, nothing to download.
# `val` is the same distribution; ValidationHook draws it with its own seed, so it is held out.
data = dict(train=dict(type="Tree2DStream", tree_seed=2), val=dict(type="Tree2DStream", tree_seed=2))
