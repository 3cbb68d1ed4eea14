"""The video modality: moving_shapes and video folders, MP4 through decord (read) and imageio-ffmpeg (write)."""
