"""Template metadata the constructs write and the operator tools read.

Free of the CDK (as this package's ``__init__`` is), so that ``ops/`` reads these keys without loading it.
"""

#: On the resources the compliance profile adds that bill while idle: ``pipeline cost`` marks them as the
#: profile's and prints the default's figure beside them.
PROFILE_METADATA = "pipeline-constructs:profile"
