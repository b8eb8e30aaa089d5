const D = JSON.parse(document.getElementById('data').textContent);
const tip = document.getElementById('tip');
function showTip(e, text){tip.textContent=text;tip.style.display='block';
  tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';}
document.addEventListener('mouseover', e => {const t=e.target.closest('[data-tip]'); if(t) showTip(e, t.dataset.tip);});
document.addEventListener('mousemove', e => {const t=e.target.closest('[data-tip]');
  if(t) showTip(e, t.dataset.tip); else tip.style.display='none';});
// sorting: by the number a cell holds (its mean), missing values last in either direction
const table = document.getElementById('board');
if (table) {
  const body = table.tBodies[0];
  table.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
    const asc = !th.classList.contains('desc') && th.classList.contains('asc') ? false :
                th.classList.contains('desc') ? true : th.dataset.type !== 'num';
    table.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
    th.classList.add(asc ? 'asc' : 'desc');
    const rows = Array.from(body.rows);
    const key = r => r.cells[i].dataset.v;
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === '' && y === '') return 0; if (x === '') return 1; if (y === '') return -1;
      const c = th.dataset.type === 'num' ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(r => body.appendChild(r));
  }));
  const q = document.getElementById('q'), sel = document.getElementById('access');
  const filter = () => Array.from(body.rows).forEach(r => {
    const okText = r.dataset.label.toLowerCase().includes(q.value.toLowerCase());
    const okSel = !sel.value || r.dataset.access === sel.value;
    r.style.display = okText && okSel ? '' : 'none';
  });
  q.addEventListener('input', filter); sel.addEventListener('change', filter);
}
const PALETTE = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22',
                 '#17becf','#393b79','#637939','#8c6d31','#843c39','#7b4173','#3182bd'];
function color(i){return PALETTE[i % PALETTE.length];}
function jobs(n){return n === 1 ? 'one job' : 'mean over ' + n + ' jobs';}
function heat(v){ if (v === null) return '#d9dce3';  // viridis-like ramp, 0..100
  const s=[[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]]; const x=Math.max(0,Math.min(1,v/100))*4;
  const i=Math.min(3,Math.floor(x)), f=x-i; const c=s[i].map((a,k)=>Math.round(a+(s[i+1][k]-a)*f));
  return 'rgb('+c.join(',')+')';}
function matrixTable(title, R, tasks){
  const t=document.createElement('table'); const cap=t.createCaption(); cap.textContent=title;
  R.forEach((row, s) => { const tr=t.insertRow(); row.forEach((v, j) => { const td=tr.insertCell();
    td.style.background=heat(v); td.textContent = v === null ? '' : Math.round(v);
    td.dataset.tip = (s === 0 ? 'before any step' : 'after step ' + s) + ', ' +
      (tasks ? 'task ' + tasks[j] : 'task arriving ' + (j + 1) + '.') + ': ' +
      (v === null ? 'not measured' : v.toFixed(1) + '%');
  });});
  const d=document.createElement('div'); d.className='mat'; d.appendChild(t); return d;}
// accuracy over steps; every element is built through the DOM: text from the result files is
// set as text or attribute values, never parsed as markup
const svg = document.getElementById('curves');
function el(tag, attrs, text){ const x=document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const k in attrs) x.setAttribute(k, attrs[k]); if (text !== undefined) x.textContent=text; return x;}
if (svg) {
  const W=720,H=300,L=46,B=30,T=10,Rr=10; const rows=D.rows; const n=Math.max(...rows.map(r=>r.curve.length));
  const vals=rows.flatMap(r=>r.curve).filter(v=>v!==null); const lo=Math.max(0,Math.floor(Math.min(...vals)/10)*10);
  const x=s=>L+(W-L-Rr)*(n===1?0.5:(s-1)/(n-1)), y=v=>T+(H-T-B)*(1-(v-lo)/(100-lo));
  for(let v=lo; v<=100; v+=10) {
    svg.appendChild(el('line', {x1:L, x2:W-Rr, y1:y(v), y2:y(v), stroke:'#e3e6ec'}));
    svg.appendChild(el('text', {x:L-6, y:y(v)+4, 'text-anchor':'end'}, String(v)));
  }
  for(let s=1; s<=n; s++) svg.appendChild(el('text', {x:x(s), y:H-B+16, 'text-anchor':'middle'}, String(s)));
  svg.appendChild(el('text', {x:(W+L)/2, y:H-2, 'text-anchor':'middle'}, 'step t'));
  const legend=document.getElementById('legend');
  rows.forEach((r,i)=>{ const pts=r.curve.map((v,s)=>v===null?null:[x(s+1),y(v)]).filter(p=>p);
    svg.appendChild(el('polyline', {fill:'none', stroke:color(i), 'stroke-width':1.8,
                                    points:pts.map(p=>p.join(',')).join(' ')}));
    r.curve.forEach((v,s)=>{ if(v===null) return;
      const c=el('circle', {cx:x(s+1), cy:y(v), r:4, fill:color(i)});
      c.dataset.tip=r.label+', step '+(s+1)+': '+v.toFixed(1)+'% ('+jobs(r.n)+')'; svg.appendChild(c); });
    const span=document.createElement('span'), sw=document.createElement('i'); sw.style.background=color(i);
    span.appendChild(sw); span.appendChild(document.createTextNode(r.label)); legend.appendChild(span);
  });
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
}
const mats=document.getElementById('mats');
if (mats) D.rows.forEach(r => mats.appendChild(matrixTable(r.label + ' (' + jobs(r.n) + ')', r.matrix, null)));
document.querySelectorAll('details[data-label]').forEach(d => d.addEventListener('toggle', () => {
  if (!d.open || d.dataset.done) return; d.dataset.done='1';
  const r=D.rows.find(x=>x.label===d.dataset.label); const box=document.createElement('div'); box.className='mats';
  r.jobs.forEach(j => box.appendChild(matrixTable(j.job + ' · key ' + j.key, j.R, j.tasks))); d.appendChild(box);
}));
