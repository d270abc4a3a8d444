"""Model families and loading: the prompt encoder, layer capture, quantisation, upsampling."""
