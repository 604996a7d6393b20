"""Images the project generates (nothing downloaded) for its demo, benchmarks and tests.

``synth``: crops of scikit-image's bundled photos and procedural shapes; ``digits``: rendered
digits; ``demo_data``: the demo's clean and damaged datasets written as Parquet. Outside
``restore_core`` because they are data, not restoration: the core never imports them.
"""
