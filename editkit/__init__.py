"""editkit: custom diffusers pipelines for instruction-driven image editing.

The shared pieces live here (conditioning, guidance, step correctors, image
I/O, encoders, task codecs); one pipeline per method lives in
`editkit.pipelines`.
"""

__version__ = "0.1.0"
