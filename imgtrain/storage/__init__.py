"""Where a run's files and a run's data live: a local folder, or a bucket (``s3://``, ``gs://``).

The one seam between imgtrain and object storage. Everything else works on local paths and
``atomic``'s writes: a bucket run is trained in its local copy (``places``), which ``mirror``
pulls before and pushes, in commit order, as the run goes (``uploader``, off the training
thread), one training at a time (``lease``); a command that only reads a run works in a copy
of its own (``readcopy``) and never writes the training's; bucket data is staged to local
disk once (``stage``) or streamed (``stream``). ``urls`` owns the schemes, their clients and
what their failures mean. A local path passes through untouched.

The package imports nothing itself: ``config`` reads ``urls`` beneath everything else, and
``runplace`` (the run directory's side) sits above ``rundir``.
"""
