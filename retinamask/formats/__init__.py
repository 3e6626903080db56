"""File formats: images, videos and streams (video_probe, video_read, video_write), a video's results
(video_results), .bin/.info, raw output files, the exported model's contract (ModelInfo), the run sidecar.
No torch.
"""
