// AudioWorklet processor for the page's Listen mode (listen.js): the microphone's samples,
// downmixed to mono at the context's rate, posted to the page in ~100-ms Float32Array blocks.
// The message "stop" posts what is left, then "done".
"use strict";

class ListenTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(Math.max(128, Math.round(sampleRate / 10)));
    this.fill = 0;
    this.on = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop" && this.on) {
        this.on = false;
        if (this.fill) this.port.postMessage(this.block.slice(0, this.fill));
        this.fill = 0;
        this.port.postMessage("done");
      }
    };
  }

  process(inputs) {
    if (!this.on) return false;
    const input = inputs[0];
    if (input && input.length) {
      const channels = input.length;
      const n = input[0].length;
      for (let i = 0; i < n; i++) {
        let v = 0;
        for (let c = 0; c < channels; c++) v += input[c][i];
        this.block[this.fill++] = v / channels;
        if (this.fill === this.block.length) {
          this.port.postMessage(this.block.slice());
          this.fill = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("auscult-listen-tap", ListenTap);
